//! Updating `docs/PERFORMANCE.md` section by section: a re-run of one benchmark
//! replaces its own section and leaves the others (each says which run made it).

/// The heading of the list of benchmarks that did not complete.
pub const FAILED: &str = "Benchmarks that did not complete";

/// `existing` with each `fresh` section (title, markdown from `## ` on) in place of
/// the one of the same title, or appended; the failure list replaced by `failed`.
pub fn update(existing: &str, fresh: &[(String, String)], failed: Option<String>) -> String {
    let mut parts = existing.split("\n## ");
    let mut out = parts.next().unwrap_or_default().trim_end().to_owned();
    out.push_str("\n\n");
    let title_of = |s: &str| s.lines().next().unwrap_or_default().trim().to_owned();
    let mut placed = vec![false; fresh.len()];
    for old in parts {
        let title = title_of(old);
        if title == FAILED {
            continue;
        }
        match fresh.iter().position(|(t, _)| *t == title) {
            Some(i) => {
                out.push_str(&fresh[i].1);
                placed[i] = true;
            }
            None => out.push_str(&format!("## {}\n", old.trim_end())),
        }
        out.push('\n');
    }
    for (i, (_, md)) in fresh.iter().enumerate() {
        if !placed[i] {
            out.push_str(md);
            out.push('\n');
        }
    }
    out.push_str(&failed.unwrap_or_default());
    out.trim_end().to_owned() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "# Performance\n\n- command: `x`\n\n## 1. A\n\nold a\n\n## 2. B\n\nold b\n\n## Benchmarks that did not complete\n\n- b: boom\n";

    #[test]
    fn replaces_a_section_in_place_and_keeps_the_rest() {
        let fresh = vec![("1. A".to_owned(), "## 1. A\n\nnew a\n".to_owned())];
        let md = update(REPORT, &fresh, None);
        assert_eq!(
            md,
            "# Performance\n\n- command: `x`\n\n## 1. A\n\nnew a\n\n## 2. B\n\nold b\n"
        );
    }

    #[test]
    fn appends_a_new_section_and_lists_new_failures() {
        let fresh = vec![("3. C".to_owned(), "## 3. C\n\nc\n".to_owned())];
        let md = update(REPORT, &fresh, Some(format!("## {FAILED}\n\n- d: bad\n")));
        assert!(
            md.contains("## 1. A\n\nold a\n\n## 2. B\n\nold b\n\n## 3. C\n\nc\n\n## Benchmarks")
        );
        assert!(md.ends_with("- d: bad\n") && !md.contains("boom"), "{md}");
    }
}
