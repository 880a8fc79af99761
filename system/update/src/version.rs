//! Image versions: `<workspace version>-<build id>`, e.g. `0.1.0-20261124223000`, compared
//! naturally (runs of digits as numbers, the rest as text), so `0.1.0-10` > `0.1.0-9` >
//! `0.1.0`.

use std::cmp::Ordering;

/// A version is 1-64 characters of `[0-9A-Za-z.+_~-]` starting with a digit.
pub fn is_valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_digit()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+_~-".contains(&b))
}

fn segments(v: &str) -> Vec<(bool, &str)> {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let digit = b[i].is_ascii_digit();
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() == digit {
            i += 1;
        }
        out.push((digit, &v[start..i]));
    }
    out
}

/// Natural order of two versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (sa, sb) = (segments(a), segments(b));
    for (x, y) in sa.iter().zip(sb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((false, x), (false, y)) => x.cmp(y),
            // A number sorts after text at the same position.
            ((true, _), (false, _)) => Ordering::Greater,
            ((false, _), (true, _)) => Ordering::Less,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    sa.len().cmp(&sb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        assert_eq!(compare("0.1.0-10", "0.1.0-9"), Ordering::Greater);
        assert_eq!(compare("0.1.0-2", "0.1.0"), Ordering::Greater);
        assert_eq!(compare("0.1.0", "0.1.0"), Ordering::Equal);
        assert_eq!(compare("0.2.0", "0.10.0"), Ordering::Less);
        assert_eq!(
            compare("0.1.0-20261124223000", "0.1.0-20261124221500"),
            Ordering::Greater
        );
        assert_eq!(compare("1.0.01", "1.0.1"), Ordering::Equal);
    }

    #[test]
    fn validity() {
        assert!(is_valid("0.1.0-20261124223000"));
        assert!(is_valid("1.2.3+build.4"));
        assert!(!is_valid(""));
        assert!(!is_valid("v1"));
        assert!(!is_valid("1 2"));
        assert!(!is_valid("1/../2"));
    }
}
