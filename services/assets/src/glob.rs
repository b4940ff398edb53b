//! Minimal path globbing for manifest entries.
//!
//! Hand-rolled rather than a crate because the manifest needs only `*`, `?` and `**`, and the
//! semantics must be exact and obvious: `*`/`?` never cross a `/`, `**` as a whole segment
//! matches zero or more segments.

/// Whether `path` (a `/`-separated wheel entry name) matches `pattern`.
pub(crate) fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    match_segments(&pattern, &path)
}

fn match_segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((seg, tail)) => match_segment(first, seg) && match_segments(rest, tail),
            None => false,
        },
    }
}

/// Classic wildcard matching with single-star backtracking (linear for one `*`, quadratic
/// worst case; segments are short file names).
fn match_segment(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_star() {
        assert!(matches("a/b.json", "a/b.json"));
        assert!(!matches("a/b.json", "a/b.jsonl"));
        assert!(matches("a/*.json", "a/b.json"));
        assert!(matches("a/*.json", "a/.json"));
        assert!(!matches("a/*.json", "a/c/b.json"), "* must not cross /");
        assert!(matches("a/b?.txt", "a/b1.txt"));
        assert!(!matches("a/b?.txt", "a/b.txt"));
        assert!(matches("a/*_v*.json", "a/anchor_v1.json"));
        assert!(!matches("a/*", "a"));
    }

    #[test]
    fn double_star() {
        let p = "pyrit/datasets/scorer_evals/**/*.csv";
        assert!(matches(p, "pyrit/datasets/scorer_evals/harm/x.csv"));
        assert!(
            matches(p, "pyrit/datasets/scorer_evals/x.csv"),
            "** matches zero segments"
        );
        assert!(matches(p, "pyrit/datasets/scorer_evals/a/b/x.csv"));
        assert!(!matches(p, "pyrit/datasets/scorer_evals/harm/x.jsonl"));
        assert!(!matches(p, "pyrit/datasets/other/x.csv"));
        assert!(matches("**", "any/thing"));
    }
}
