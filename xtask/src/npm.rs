//! npm packages the tasks run (the OpenID provider, Azurite), installed with `npm ci` into
//! `.local/<name>/` from a package.json and package-lock.json kept in `xtask/<name>/`, and
//! again whenever those change.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Installs `xtask/<name>/`'s packages into `.local/<name>/` unless the installation there
/// was made from the same package files and `check` (a path inside it) exists.
pub fn ensure_installed(root: &Path, name: &str, check: &str, what: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(".local").join(name);
    let source = root.join("xtask").join(name);
    let package = fs::read_to_string(source.join("package.json"))
        .with_context(|| format!("reading xtask/{name}/package.json"))?;
    let lock = fs::read_to_string(source.join("package-lock.json"))
        .with_context(|| format!("reading xtask/{name}/package-lock.json"))?;
    let wanted = format!("{package}\n{lock}");
    let stamp = dir.join(".chgate-installed");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && dir.join(check).exists() {
        return Ok(dir);
    }
    let npm = find_on_path("npm").with_context(|| {
        format!("`npm` is not on PATH: installing {what} needs npm (on Debian: apt-get install npm)")
    })?;
    eprintln!("Installing {what} into {}", dir.display());
    fs::create_dir_all(&dir)?;
    let _ = fs::remove_file(&stamp);
    fs::write(dir.join("package.json"), &package)?;
    fs::write(dir.join("package-lock.json"), &lock)?;
    let status = Command::new(&npm)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {} ci", npm.display()))?;
    if !status.success() {
        bail!(
            "`npm ci` in {} failed with {status} (installing {what} from the npm registry)",
            dir.display()
        );
    }
    fs::write(stamp, wanted)?;
    Ok(dir)
}

/// An executable named `program` on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}
