//! The catalogs and the access policy the bench's handlers serve: copies of the shipped ones
//! under `target/bench/`, with caching switched on or off per endpoint and every `limits`
//! removed from the policy, so that the figures are of speed, not of throttling.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// An endpoint's `[cache]` table.
#[derive(Clone, Copy)]
pub(super) struct CacheRule {
    /// Seconds a result is fresh.
    pub(super) ttl: u64,
    /// Seconds an expired result may still be served while one refresh runs.
    pub(super) stale: Option<u64>,
}

impl CacheRule {
    fn toml(self) -> String {
        match self.stale {
            Some(stale) => format!("ttl = {}\nstale = {stale}\n", self.ttl),
            None => format!("ttl = {}\n", self.ttl),
        }
    }
}

/// Copies the catalog at `source` to `dest` (replacing it). `rule(endpoint)` says whether the
/// endpoint caches: `Some` gives it that `[cache]` table, `None` takes away any it had.
pub(super) fn copy_catalog(source: &Path, dest: &Path, rule: &dyn Fn(&str) -> Option<CacheRule>) -> anyhow::Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    copy_tree(source, dest)?;
    for entry in std::fs::read_dir(dest)? {
        let folder = entry?.path();
        let path = folder.join("endpoint.toml");
        if !path.is_file() {
            continue;
        }
        let name = folder
            .file_name()
            .and_then(|n| n.to_str())
            .context("an endpoint folder name that is not UTF-8")?;
        let text = std::fs::read_to_string(&path)?;
        let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        // Built-in functions (kind = "health") have no query to cache.
        if table
            .get("kind")
            .and_then(toml::Value::as_str)
            .is_some_and(|kind| kind != "query")
        {
            continue;
        }
        let wanted = rule(name);
        let text = match (wanted, table.contains_key("cache")) {
            (None, false) => continue,
            // Appending keeps the file as written, comments and all.
            (Some(wanted), false) => format!("{text}\n[cache]\n{}", wanted.toml()),
            (wanted, true) => {
                table.remove("cache");
                if let Some(wanted) = wanted {
                    table.insert("cache".to_owned(), toml::Value::Table(toml::from_str(&wanted.toml())?));
                }
                toml::to_string(&table)?
            }
        };
        std::fs::write(&path, text)?;
    }
    Ok(())
}

fn copy_tree(source: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for entry in std::fs::read_dir(source).with_context(|| format!("reading {}", source.display()))? {
        let entry = entry?;
        let target = dest.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Writes `source`'s policy to `dest` with every key named `limits` removed, at any depth
/// (`[limits]`, `[roles.<role>.limits]`, …). Returns how many were removed.
pub(super) fn policy_without_limits(source: &Path, dest: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", source.display()))?;
    let mut policy = toml::Value::Table(table);
    let removed = remove_key(&mut policy, "limits");
    let text = format!(
        "# {} without any `limits` (written by cargo xtask bench).\n{}",
        source.display(),
        toml::to_string(&policy)?
    );
    std::fs::write(dest, text).with_context(|| format!("writing {}", dest.display()))?;
    Ok(removed)
}

fn remove_key(value: &mut toml::Value, key: &str) -> usize {
    match value {
        toml::Value::Table(table) => {
            let here = usize::from(table.remove(key).is_some());
            here + table.iter_mut().map(|(_, v)| remove_key(v, key)).sum::<usize>()
        }
        toml::Value::Array(items) => items.iter_mut().map(|v| remove_key(v, key)).sum(),
        _ => 0,
    }
}

/// Whether this build of the handler accepts the catalog (`handler check`); the refusal's
/// text if not.
pub(super) fn check(root: &Path, binary: &Path, dir: &Path, policy: &Path) -> anyhow::Result<Result<(), String>> {
    let output = Command::new(binary)
        .current_dir(root)
        .arg("check")
        .arg(dir)
        .arg("--access-policy")
        .arg(policy)
        .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
        .output()
        .context("running handler check")?;
    if output.status.success() {
        Ok(Ok(()))
    } else {
        let text = String::from_utf8_lossy(&output.stderr);
        let text = text.trim();
        Ok(Err(if text.is_empty() {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        } else {
            text.to_owned()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_limits_at_any_depth() {
        let text = r#"
            version = 1
            [limits]
            max_inflight = 10
            [roles.analyst]
            description = "x"
            [roles.analyst.limits]
            rate = 5
            [roles.analyst.clickhouse]
            max_execution_time = 20
            [[grants]]
            role = "analyst"
            limits = { burst = 3 }
        "#;
        let mut value = toml::Value::Table(toml::from_str(text).expect("valid"));
        assert_eq!(remove_key(&mut value, "limits"), 3);
        let text = toml::to_string(&value).expect("serialises");
        assert!(!text.contains("limits"), "{text}");
        assert!(text.contains("max_execution_time = 20"), "{text}");
    }

    #[test]
    fn copies_a_catalog_with_caching_on_or_off() -> anyhow::Result<()> {
        let root = std::env::temp_dir().join(format!("chgate-bench-catalog-{}", std::process::id()));
        let source = root.join("source");
        for (name, extra) in [("a", ""), ("b", "\n[cache]\nttl = 5\n")] {
            std::fs::create_dir_all(source.join(name))?;
            std::fs::write(
                source.join(name).join("endpoint.toml"),
                format!("description = \"{name}\"\n{extra}"),
            )?;
            std::fs::write(source.join(name).join("query.sql"), "SELECT 1")?;
        }
        let read = |dir: &str, name: &str| -> anyhow::Result<toml::Table> {
            Ok(toml::from_str(&std::fs::read_to_string(
                root.join(dir).join(name).join("endpoint.toml"),
            )?)?)
        };

        copy_catalog(&source, &root.join("off"), &|_| None)?;
        assert!(!read("off", "a")?.contains_key("cache"));
        assert!(!read("off", "b")?.contains_key("cache"));
        assert!(root.join("off/a/query.sql").is_file());

        let rule = CacheRule {
            ttl: 600,
            stale: Some(30),
        };
        copy_catalog(&source, &root.join("on"), &|_| Some(rule))?;
        for name in ["a", "b"] {
            let cache = read("on", name)?;
            let cache = cache.get("cache").and_then(|c| c.as_table()).context("a cache table")?;
            assert_eq!(cache.get("ttl").and_then(toml::Value::as_integer), Some(600));
            assert_eq!(cache.get("stale").and_then(toml::Value::as_integer), Some(30));
        }
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
