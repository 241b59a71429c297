//! Runbooks: Markdown files whose front matter says which incidents they are for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runbook {
    /// `rb-` and the file name without `.md`: stable while the file keeps its name.
    pub id: String,
    pub title: String,
    /// The first paragraph of the body, for the facts pack.
    pub summary: String,
    pub path: PathBuf,
    /// Every one must hold: `label=value`, `label!=value` or `label=~regex`.
    pub matchers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    title: Option<String>,
    #[serde(rename = "match")]
    matchers: Vec<String>,
}

/// Labels of an incident, where a label may take several values (the services involved).
pub type LabelSets = BTreeMap<String, BTreeSet<String>>;

impl Runbook {
    /// Whether every matcher holds for some value of its label.
    pub fn matches(&self, labels: &LabelSets) -> bool {
        self.matchers.iter().all(|m| {
            let values = |k: &str| labels.get(k.trim()).into_iter().flatten();
            if let Some((k, re)) = m.split_once("=~") {
                match regex::Regex::new(&format!("^(?:{})$", re.trim())) {
                    Ok(re) => values(k).any(|v| re.is_match(v)),
                    Err(_) => false,
                }
            } else if let Some((k, v)) = m.split_once("!=") {
                !values(k).any(|x| x == v.trim())
            } else if let Some((k, v)) = m.split_once('=') {
                values(k).any(|x| x == v.trim())
            } else {
                false
            }
        })
    }
}

/// Reads every `*.md` in `dir` (sorted by name). A file without front matter or with a
/// broken one is an error naming the file: a runbook that silently never matches is worse.
pub fn load(dir: &Path) -> Result<Vec<Runbook>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("explain.runbooks_dir {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("runbook {}: {e}", path.display()))?;
        out.push(parse(&path, &text)?);
    }
    Ok(out)
}

/// One runbook from its text.
pub fn parse(path: &Path, text: &str) -> Result<Runbook, String> {
    let bad = |why: &str| format!("runbook {}: {why}", path.display());
    let rest = text.strip_prefix("---\n").ok_or_else(|| {
        bad("no front matter: start the file with a --- line, then `match: [service=db]`")
    })?;
    let end = rest
        .find("\n---")
        .ok_or_else(|| bad("front matter has no closing --- line"))?;
    let fm: FrontMatter =
        serde_norway::from_str(&rest[..end]).map_err(|e| bad(&format!("front matter: {e}")))?;
    for m in &fm.matchers {
        if !m.contains('=') {
            return Err(bad(&format!(
                "matcher {m:?} is not label=value, label!=value or label=~regex"
            )));
        }
        if let Some((_, re)) = m.split_once("=~") {
            regex::Regex::new(re.trim()).map_err(|e| bad(&format!("matcher {m:?}: {e}")))?;
        }
    }
    let body = rest[end + 4..].trim_start_matches(['-', '\n']);
    let heading = body
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .map(|s| s.trim().to_string());
    let summary = body
        .split("\n\n")
        .map(str::trim)
        .find(|p| !p.is_empty() && !p.starts_with('#'))
        .unwrap_or("")
        .replace('\n', " ");
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Runbook {
        id: format!("rb-{stem}"),
        title: fm.title.or(heading).unwrap_or_else(|| stem.clone()),
        summary,
        path: path.to_path_buf(),
        matchers: fm.matchers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelSets {
        let mut l = LabelSets::new();
        for (k, v) in pairs {
            l.entry(k.to_string()).or_default().insert(v.to_string());
        }
        l
    }

    #[test]
    fn front_matter_matchers_select_runbooks() {
        let rb = parse(
            Path::new("db-latency.md"),
            "---\ntitle: Database latency\nmatch: [service=db, severity!=info]\n---\n# DB\n\nCheck slow queries and locks.\nThen replicas.\n",
        )
        .unwrap();
        assert_eq!(rb.id, "rb-db-latency");
        assert_eq!(rb.title, "Database latency");
        assert_eq!(rb.summary, "Check slow queries and locks. Then replicas.");
        assert!(rb.matches(&labels(&[
            ("service", "api"),
            ("service", "db"),
            ("severity", "critical")
        ])));
        assert!(!rb.matches(&labels(&[("service", "db"), ("severity", "info")])));
        assert!(!rb.matches(&labels(&[("service", "api")])));
        let re = parse(
            Path::new("x.md"),
            "---\nmatch: [\"service=~pay.*\"]\n---\nbody\n",
        )
        .unwrap();
        assert!(re.matches(&labels(&[("service", "payments")])));
        assert!(!re.matches(&labels(&[("service", "repay")])));
    }

    #[test]
    fn broken_runbooks_are_named() {
        for text in [
            "# no front matter\n",
            "---\nmatch: [service]\n---\n",
            "---\nmatch: [a=1]\n",
            "---\nmatchers: []\n---\n",
        ] {
            let e = parse(Path::new("bad.md"), text).unwrap_err();
            assert!(e.contains("bad.md"), "{e}");
        }
    }
}
