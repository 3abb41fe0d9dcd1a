//! The recipient patterns of reject rules: `*` matches any run of characters, everything else
//! matches itself, case-insensitively.

/// Whether `text` matches `pattern` as a whole.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let t: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    // Classic linear-time wildcard matching with one backtrack point (the last `*`).
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
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
    use super::matches;

    #[test]
    fn literal_and_case() {
        assert!(matches("a@b.example", "A@B.Example"));
        assert!(!matches("a@b.example", "a@b.example.org"));
        assert!(!matches("a@b.example", "xa@b.example"));
    }

    #[test]
    fn stars() {
        assert!(matches("*@bad.example", "joe@bad.example"));
        assert!(matches("*@bad.example", "@bad.example"));
        assert!(!matches("*@bad.example", "joe@good.example"));
        assert!(matches("slow*", "slow"));
        assert!(matches("slow*", "SLOWpoke@x"));
        assert!(!matches("slow*", "xslow"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("*a*a*", "banana"));
        assert!(matches("**", "x"));
        assert!(!matches("", "x"));
        assert!(matches("", ""));
    }

    #[test]
    fn non_ascii() {
        assert!(matches("*@ÉXAMPLE.test", "u@éxample.test"));
    }
}
