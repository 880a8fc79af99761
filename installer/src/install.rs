//! Writing the image, applying an answer file onto the data partition, factory reset.
//!
//! ```text
//!  install: probe target ─▶ refuse (data / Keel install, unless --force; mounted: always)
//!           ─▶ copy keel.raw (sparse on files) ─▶ backup GPT to the disk's end (sfdisk)
//!           ─▶ answer.toml onto the data partition (debugfs; the node's /var overlay)
//!  factory reset: new ext4 on the data partition (answer kept on request); the root
//!           slots and the ESP are untouched
//! ```
//! The data partition's ext4 is edited in place with e2fsprogs (`debugfs`, `mke2fs` with
//! an offset), so the same code works on a block device and on an image file, with no
//! mount and no loop device.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use keel_model::AnswerFile;

use crate::probe::{self, Contents, GptPartition};

/// Where the answer file lives inside the data partition: the upper layer of the `/var`
/// overlay, so the running node sees it as `/var/lib/keel/answer.toml`.
pub const ANSWER_IN_DATA: &str = "overlay/var/upper/lib/keel/answer.toml";
/// Marker that makes the initramfs reformat the data partition at the next boot.
pub const RESET_MARKER: &str = ".factory-reset";
/// Label of the data filesystem.
pub const DATA_LABEL: &str = "KEEL-DATA";

const CHUNK: usize = 4 * 1024 * 1024;

/// What `install` is asked to do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The raw image (`keel.raw`).
    pub image: PathBuf,
    /// The disk (block device or image file).
    pub target: PathBuf,
    /// Answer file to put on the data partition.
    pub answer: Option<PathBuf>,
    /// Overwrite a disk that holds data or a Keel install.
    pub force: bool,
}

/// What happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    /// Bytes of the image.
    pub image_bytes: u64,
    /// Bytes written (zero chunks are skipped on files).
    pub written_bytes: u64,
    /// The target's partitions afterwards.
    pub partitions: Vec<GptPartition>,
    /// Whether an answer file was applied.
    pub answer_applied: bool,
}

fn is_block(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// Refuses a target that holds data, unless `force`; a mounted one always.
pub fn check_target(target: &Path, force: bool) -> anyhow::Result<Contents> {
    if let Some(why) = crate::disks::in_use(target) {
        bail!("refusing to write {}: {why}", target.display());
    }
    let contents = probe::probe(target)?;
    match &contents {
        Contents::Empty => {}
        _ if force => {}
        Contents::KeelInstall(_) => bail!(
            "{} holds an existing Keel install; use --factory-reset to wipe its state, or --force to overwrite it",
            target.display()
        ),
        other => bail!(
            "{} holds {other}; refusing to overwrite it without --force",
            target.display()
        ),
    }
    Ok(contents)
}

/// Checks that `image` is a Keel image (a GPT with a `root-a` partition); its size in bytes.
pub fn check_image(image: &Path) -> anyhow::Result<u64> {
    let image_parts = probe::gpt_partitions(&probe::head(image)?).unwrap_or_default();
    if !image_parts.iter().any(|p| p.name == "root-a") {
        bail!(
            "{} is not a Keel image (no GPT with a root-a partition)",
            image.display()
        );
    }
    Ok(probe::size_of(image)?)
}

/// Writes the image to the target, then applies the answer file.
pub fn install(opts: &InstallOptions) -> anyhow::Result<InstallReport> {
    let answer_text = match &opts.answer {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            AnswerFile::from_toml(&text).with_context(|| format!("in {}", p.display()))?;
            Some(text)
        }
        None => None,
    };
    install_with_answer(opts, answer_text.as_deref())
}

/// [`install`] with the answer file's text in hand (the interactive installer's path);
/// `opts.answer` is ignored. The text is validated before anything is written.
pub fn install_with_answer(
    opts: &InstallOptions,
    answer_text: Option<&str>,
) -> anyhow::Result<InstallReport> {
    if let Some(text) = answer_text {
        AnswerFile::from_toml(text).context("the answer file is invalid")?;
    }
    let image_bytes = check_image(&opts.image)?;
    check_target(&opts.target, opts.force)?;
    let block = is_block(&opts.target);
    if block {
        let size = probe::size_of(&opts.target)?;
        if size < image_bytes {
            bail!(
                "{} is {} but the image needs {}",
                opts.target.display(),
                crate::disks::human(size),
                crate::disks::human(image_bytes)
            );
        }
    }
    let written_bytes = copy_image(&opts.image, &opts.target, !block)?;
    relocate_backup_gpt(&opts.target)?;
    let partitions = probe::gpt_partitions(&probe::head(&opts.target)?).unwrap_or_default();
    if let Some(text) = answer_text {
        let data = data_partition(&partitions, &opts.target)?;
        write_answer(&opts.target, &data, text)?;
    }
    Ok(InstallReport {
        image_bytes,
        written_bytes,
        partitions,
        answer_applied: answer_text.is_some(),
    })
}

/// Copies `image` onto `target` from byte 0. On a file, all-zero chunks become holes.
/// The first MiB goes last so a half-written disk never looks like a finished install.
fn copy_image(image: &Path, target: &Path, sparse: bool) -> anyhow::Result<u64> {
    let mut src = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create(!is_block(target))
        .truncate(false)
        .open(target)
        .with_context(|| format!("opening {} for writing", target.display()))?;
    let total = probe::size_of(image)?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    let mut first: Option<Vec<u8>> = None;
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut src, &mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if pos == 0 {
            first = Some(chunk.to_vec());
            dst.seek(SeekFrom::Start(0))?;
            dst.write_all(&vec![0u8; n.min(1024 * 1024)])?;
        } else if !(sparse && chunk.iter().all(|b| *b == 0)) {
            dst.seek(SeekFrom::Start(pos))?;
            dst.write_all(chunk)
                .with_context(|| format!("writing {} at {pos}", target.display()))?;
            written += n as u64;
        }
        pos += n as u64;
    }
    if sparse {
        let len = dst.metadata()?.len();
        if len < total {
            dst.set_len(total)?;
        }
    }
    dst.sync_all()?;
    if let Some(head) = first {
        dst.seek(SeekFrom::Start(0))?;
        dst.write_all(&head)?;
        written += head.len() as u64;
        dst.sync_all()?;
    }
    Ok(written)
}

fn read_full(src: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Moves the backup GPT to the end of the disk (the image is smaller than the disk).
fn relocate_backup_gpt(target: &Path) -> anyhow::Result<()> {
    run(Command::new("sfdisk")
        .arg("--relocate")
        .arg("gpt-bak-std")
        .arg(target))
    .context("moving the backup GPT to the end of the disk (sfdisk)")?;
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The partition named `data`.
pub fn data_partition(parts: &[GptPartition], target: &Path) -> anyhow::Result<GptPartition> {
    parts
        .iter()
        .find(|p| p.name == "data")
        .cloned()
        .with_context(|| format!("{} has no partition named data", target.display()))
}

fn at_offset(target: &Path, part: &GptPartition) -> String {
    format!("{}?offset={}", target.display(), part.offset)
}

/// Puts `text` at [`ANSWER_IN_DATA`] in the data partition's ext4 (mode 0600).
pub fn write_answer(target: &Path, data: &GptPartition, text: &str) -> anyhow::Result<()> {
    AnswerFile::from_toml(text).context("the answer file is invalid")?;
    let dir = std::env::temp_dir().join(format!("keel-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("answer.toml");
    std::fs::write(&src, text)?;
    let mut script = String::new();
    let mut path = String::new();
    let parts: Vec<&str> = ANSWER_IN_DATA.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        path = if path.is_empty() {
            (*p).to_string()
        } else {
            format!("{path}/{p}")
        };
        script.push_str(&format!("mkdir {path}\n"));
    }
    script.push_str(&format!(
        "rm {ANSWER_IN_DATA}\nwrite {} {ANSWER_IN_DATA}\nsif {ANSWER_IN_DATA} mode 0100600\n",
        src.display()
    ));
    let cmds = dir.join("cmds");
    std::fs::write(&cmds, script)?;
    let result = run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(at_offset(target, data)));
    let _ = std::fs::remove_dir_all(&dir);
    result.context("writing the answer file onto the data partition (debugfs)")?;
    match read_answer(target, data)? {
        Some(back) if back == text => Ok(()),
        _ => bail!("the answer file did not read back from the data partition"),
    }
}

/// The answer file on the data partition, if any.
pub fn read_answer(target: &Path, data: &GptPartition) -> anyhow::Result<Option<String>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {ANSWER_IN_DATA}"))
        .arg(at_offset(target, data))
        .output()
        .context("running debugfs")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("File not found") {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).to_string()))
}

/// Whether `path` exists in the data partition's filesystem.
pub fn data_has(target: &Path, data: &GptPartition, path: &str) -> anyhow::Result<bool> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(at_offset(target, data))
        .output()
        .context("running debugfs")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(out.status.success() && !stderr.contains("File not found"))
}

/// Factory reset of a disk that is not running: a new, empty ext4 on the data partition
/// (the answer file kept if `keep_answer`). The ESP and both root slots are untouched.
pub fn factory_reset_disk(target: &Path, keep_answer: bool) -> anyhow::Result<()> {
    if let Some(why) = crate::disks::in_use(target) {
        bail!(
            "{} is in use ({why}); on the running node use `keel-install factory-reset` without --target",
            target.display()
        );
    }
    let parts = match probe::probe(target)? {
        Contents::KeelInstall(parts) => parts,
        other => bail!("{} holds {other}, not a Keel install", target.display()),
    };
    let data = data_partition(&parts, target)?;
    let answer = if keep_answer {
        read_answer(target, &data)?
    } else {
        None
    };
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", DATA_LABEL, "-E"])
        .arg(format!("offset={}", data.offset))
        .arg(target)
        .arg(format!("{}k", data.size / 1024)))
    .context("formatting the data partition (mke2fs)")?;
    if let Some(text) = answer {
        write_answer(target, &data, &text)?;
    }
    Ok(())
}

/// Factory reset of the running node: a marker on `/data` that the initramfs acts on at
/// the next boot (it reformats the data partition before mounting the overlays).
pub fn factory_reset_running(data_mount: &Path, keep_answer: bool) -> anyhow::Result<PathBuf> {
    if !data_mount.join("overlay").is_dir() {
        bail!(
            "{} is not a Keel data partition (no overlay/); is this a Keel node?",
            data_mount.display()
        );
    }
    let marker = data_mount.join(RESET_MARKER);
    let mut f = File::create(&marker).with_context(|| format!("writing {}", marker.display()))?;
    f.write_all(if keep_answer {
        b"keep-answer\n"
    } else {
        b"wipe\n"
    })?;
    f.sync_all()?;
    Ok(marker)
}
