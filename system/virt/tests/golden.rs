//! Golden files (H11): every `tests/data/<case>.input.toml` renders to exactly
//! `<case>.expected.xml`, and every `tests/data/invalid/<defect>.toml` is refused with exactly
//! the error chain in `<defect>.expected.err`. `KEEL_BLESS=1` rewrites the expected files;
//! review the diff before committing it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use keel_virt::DomainSpec;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn bless() -> bool {
    std::env::var_os("KEEL_BLESS").is_some_and(|v| v == "1")
}

/// Files in `dir` whose names end with `suffix`, sorted, with the suffix stripped.
fn cases(dir: &Path, suffix: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(case) = name.strip_suffix(suffix) {
            out.push((case.to_string(), path.clone()));
        }
    }
    out.sort();
    Ok(out)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn check(expected_path: &Path, actual: &str, mismatches: &mut Vec<String>) -> Result<()> {
    if bless() {
        fs::write(expected_path, actual)?;
        return Ok(());
    }
    let expected = fs::read_to_string(expected_path).with_context(|| {
        format!(
            "{} is missing (KEEL_BLESS=1 creates it)",
            expected_path.display()
        )
    })?;
    if expected != actual {
        mismatches.push(format!(
            "{} differs:\n--- expected\n{expected}\n--- actual\n{actual}",
            expected_path.display()
        ));
    }
    Ok(())
}

/// Renders one golden input (shared with the real-libvirt test, which defines each of them).
pub fn render(input: &Path) -> Result<String> {
    let text = fs::read_to_string(input)?;
    let spec: DomainSpec =
        toml::from_str(&text).with_context(|| format!("parsing {}", input.display()))?;
    Ok(spec.to_xml()?)
}

#[test]
fn valid_specs_render_to_the_golden_xml() -> Result<()> {
    let cases = cases(&data(), ".input.toml")?;
    assert!(cases.len() >= 3, "golden cases missing: {cases:?}");
    let mut mismatches = Vec::new();
    for (case, input) in &cases {
        let xml = render(input).with_context(|| format!("case {case}"))?;
        check(
            &data().join(format!("{case}.expected.xml")),
            &xml,
            &mut mismatches,
        )?;
    }
    if !mismatches.is_empty() {
        bail!("{}", mismatches.join("\n"));
    }
    Ok(())
}

#[test]
fn invalid_specs_are_refused_with_the_golden_error() -> Result<()> {
    let dir = data().join("invalid");
    let cases = cases(&dir, ".toml")?;
    assert!(cases.len() >= 5, "invalid cases missing: {cases:?}");
    let mut mismatches = Vec::new();
    for (case, input) in &cases {
        let text = fs::read_to_string(input)?;
        let err = match toml::from_str::<DomainSpec>(&text) {
            Err(e) => format!("cannot parse: {}", e.message()),
            Ok(spec) => match spec.to_xml() {
                Err(e) => chain(&e),
                Ok(_) => bail!("case {case} was accepted; its name says it is invalid"),
            },
        };
        check(
            &dir.join(format!("{case}.expected.err")),
            &format!("{err}\n"),
            &mut mismatches,
        )?;
    }
    if !mismatches.is_empty() {
        bail!("{}", mismatches.join("\n"));
    }
    Ok(())
}

#[test]
fn rendering_is_stable_across_a_toml_round_trip() -> Result<()> {
    for (case, input) in cases(&data(), ".input.toml")? {
        let spec: DomainSpec = toml::from_str(&fs::read_to_string(&input)?)?;
        let again: DomainSpec = toml::from_str(&toml::to_string(&spec)?)?;
        assert_eq!(spec, again, "case {case}");
        assert_eq!(spec.to_xml()?, again.to_xml()?, "case {case}");
    }
    Ok(())
}
