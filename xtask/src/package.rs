//! `cargo xtask package`: the deployable app root in `dist/` and the same files zipped into
//! `target/package/chgate.zip`.
//!
//! The handler is built static for x86_64-unknown-linux-musl: the Functions Linux images span
//! glibc 2.31 to 2.36, and a static binary runs on all of them. Its C dependencies (aws-lc-sys
//! under rustls, libmimalloc-sys) are compiled with musl's own compiler wrapper, `musl-gcc`,
//! and linked by rust-lld. What is missing is installed: the target's standard library with
//! rustup, `musl-gcc` from Debian's `musl-tools` with apt-get.
//!
//! `dist/` is laid out as the host wants an app root: host.json, the `handler`, access.toml
//! and every function folder as an immediate subfolder, plus a `.funcignore` for the tools
//! that zip the folder themselves. Only named files are copied, so local settings, keys,
//! `.local/` and `target/` never reach it. The zip is kept outside `dist/` so that a tool
//! zipping `dist/` does not pick up a zip inside it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::npm::find_on_path;

/// The target the handler is built for.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The C compiler for that target: Debian's `musl-tools` wraps gcc around musl's headers and
/// libraries under this name.
pub const MUSL_CC: &str = "musl-gcc";

/// The executable the host starts (host.json's `customHandler.description.defaultExecutablePath`).
pub const EXECUTABLE: &str = "handler";

/// What each function folder may hold that the handler reads; anything else stays behind.
pub const FUNCTION_FILES: [&str; 3] = ["function.json", "endpoint.toml", "query.sql"];

/// Files of the repository root copied as they are.
const ROOT_FILES: [&str; 2] = ["host.json", "access.toml"];

/// Patterns for tools that zip `dist/` themselves (azd, Core Tools): nothing they match is in
/// `dist/`, and this keeps it so if something is dropped there by hand.
const FUNCIGNORE: &str = "\
target
local.settings.json
*.pem
*.key
.local
tests
bench
";

/// Where the package went.
#[derive(Debug)]
pub struct Package {
    /// The app root (`dist/`).
    pub dist: PathBuf,
    /// The zip of it (`target/package/chgate.zip`).
    pub zip: PathBuf,
    /// `dist/handler`.
    pub binary: PathBuf,
    /// Its size in bytes.
    pub binary_bytes: u64,
    /// The zip entries, in the order written.
    pub entries: Vec<String>,
    /// How long the release build took.
    pub build_time: Duration,
}

/// Builds the static handler, lays out `dist/` and zips it.
pub fn package(root: &Path) -> anyhow::Result<Package> {
    ensure_target()?;
    ensure_musl_cc()?;
    let began = Instant::now();
    let built = build(root)?;
    let build_time = began.elapsed();
    let dist = root.join("dist");
    assemble(root, &built, &dist)?;
    let zip = root.join("target/package/chgate.zip");
    let entries = zip_dir(&dist, &zip)?;
    let binary = dist.join(EXECUTABLE);
    let binary_bytes = fs::metadata(&binary)
        .with_context(|| format!("reading {}", binary.display()))?
        .len();
    Ok(Package {
        dist,
        zip,
        binary,
        binary_bytes,
        entries,
        build_time,
    })
}

/// Installs the target's standard library with rustup when this toolchain lacks it.
fn ensure_target() -> anyhow::Result<()> {
    let output = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    anyhow::ensure!(
        output.status.success(),
        "rustc --print sysroot failed with {}",
        output.status
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).join("lib").is_dir() {
        return Ok(());
    }
    let rustup = find_on_path("rustup").with_context(|| {
        format!(
            "this toolchain ({}) has no standard library for {TARGET}, and rustup is not on PATH to add it",
            sysroot.display()
        )
    })?;
    println!("package: adding the {TARGET} target (rustup target add {TARGET})");
    // rustup's proxy passed RUSTUP_TOOLCHAIN down, so the target goes to the toolchain in use.
    let status = Command::new(rustup)
        .args(["target", "add", TARGET])
        .stdin(Stdio::null())
        .status()
        .context("running rustup target add")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed with {status}");
    }
    Ok(())
}

/// Installs Debian's `musl-tools` when `musl-gcc` is not on PATH.
fn ensure_musl_cc() -> anyhow::Result<()> {
    if find_on_path(MUSL_CC).is_some() {
        return Ok(());
    }
    let by_hand = "install it by hand (Debian/Ubuntu: sudo apt-get install musl-tools; elsewhere a musl \
                   cross compiler named musl-gcc), then run this again";
    let Some(apt) = find_on_path("apt-get") else {
        bail!("`{MUSL_CC}` is not on PATH and there is no apt-get to install it: {by_hand}");
    };
    println!("package: installing musl-tools for {MUSL_CC} (apt-get install -y musl-tools)");
    let install = || {
        Command::new(&apt)
            .args(["install", "-y", "-q", "musl-tools"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get install")
    };
    let mut status = install()?;
    if !status.success() {
        // A machine whose package lists were never fetched knows no musl-tools yet.
        println!("package: apt-get install failed; fetching the package lists (apt-get update) and trying again");
        let updated = Command::new(&apt)
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get update")?;
        if updated.success() {
            status = install()?;
        }
    }
    if !status.success() || find_on_path(MUSL_CC).is_none() {
        bail!("`{MUSL_CC}` is missing and `apt-get install -y musl-tools` failed ({status}; it needs root): {by_hand}");
    }
    Ok(())
}

/// `cargo build --release --locked --target x86_64-unknown-linux-musl --bin handler`, with the
/// musl C compiler for the C dependencies; the path of the binary built.
fn build(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("package: building the handler for {TARGET} (release)");
    // Set here rather than in .cargo/config.toml so that other builds keep their own tools.
    // The C code must see musl's headers, not glibc's: musl-gcc. aws-lc-sys builds with cc from
    // its pregenerated bindings for this target, so neither cmake nor bindgen is needed. The
    // link is rust-lld's with Rust's own musl start files and libc: musl-gcc as the linker
    // leaves a static-pie binary asking for /lib/ld-musl-x86_64.so.1, which the host images
    // do not have.
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["--package", "chgate", "--bin", EXECUTABLE])
        .env("CC_x86_64_unknown_linux_musl", MUSL_CC)
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .stdin(Stdio::null())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release --target {TARGET} failed with {status}");
    }
    let binary = root.join("target").join(TARGET).join("release").join(EXECUTABLE);
    let image = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    if let Some(loader) = elf_interpreter(&image).with_context(|| format!("reading {}", binary.display()))? {
        bail!(
            "{} asks for the dynamic loader {loader}: it would not start on the host's images",
            binary.display()
        );
    }
    Ok(binary)
}

/// The program interpreter (dynamic loader) an ELF executable names, if any: a static binary
/// names none.
fn elf_interpreter(image: &[u8]) -> anyhow::Result<Option<String>> {
    let elf = goblin::elf::Elf::parse(image).context("not an ELF file")?;
    Ok(elf.interpreter.map(str::to_owned))
}

/// Recreates `dist` as an app root.
fn assemble(root: &Path, binary: &Path, dist: &Path) -> anyhow::Result<()> {
    if dist.exists() {
        fs::remove_dir_all(dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    fs::create_dir_all(dist).with_context(|| format!("creating {}", dist.display()))?;
    for name in ROOT_FILES {
        copy(&root.join(name), &dist.join(name))?;
    }
    let handler = dist.join(EXECUTABLE);
    copy(binary, &handler)?;
    // The host marks the executable itself only on Consumption and Flex; elsewhere the bit
    // must come with the files.
    fs::set_permissions(&handler, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", handler.display()))?;
    for function in function_dirs(&root.join("functions"))? {
        let name = function
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("{}: a function folder needs a UTF-8 name", function.display()))?;
        anyhow::ensure!(
            function.join("function.json").is_file(),
            "{}: a function folder without function.json",
            function.display()
        );
        let target = dist.join(name);
        fs::create_dir(&target).with_context(|| format!("creating {} (is the name taken?)", target.display()))?;
        for file in FUNCTION_FILES {
            let source = function.join(file);
            if source.is_file() {
                copy(&source, &target.join(file))?;
            }
        }
    }
    fs::write(dist.join(".funcignore"), FUNCIGNORE).context("writing dist/.funcignore")?;
    Ok(())
}

/// The function folders under `functions/`, by name (files there, such as its README, and
/// hidden folders are not functions).
pub fn function_dirs(functions: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(functions).with_context(|| format!("reading {}", functions.display()))? {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if entry.file_type()?.is_dir() && !hidden {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Copies one file, with a message naming it on failure; new files get 0644 (the umask and the
/// source's mode play no part, so the package is the same wherever it is built).
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

/// Zips every file under `dir` into `zip` (replaced), names relative to `dir` with `/`; the
/// entry names in the order written.
fn zip_dir(dir: &Path, zip: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    if let Some(parent) = zip.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let out = fs::File::create(zip).with_context(|| format!("creating {}", zip.display()))?;
    let mut writer = ZipWriter::new(std::io::BufWriter::new(out));
    // A fixed time: the same files give the same zip, whenever they are packaged.
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default());
    for name in &files {
        // Zip deploys keep the mode in the entry's external attributes; only the executable
        // gets the exec bits, as Core Tools does.
        let mode = if name == EXECUTABLE { 0o755 } else { 0o644 };
        writer
            .start_file(name.as_str(), options.unix_permissions(mode))
            .with_context(|| format!("adding {name} to {}", zip.display()))?;
        let bytes = fs::read(dir.join(name)).with_context(|| format!("reading {name}"))?;
        writer
            .write_all(&bytes)
            .with_context(|| format!("writing {name} into {}", zip.display()))?;
    }
    writer
        .finish()
        .with_context(|| format!("finishing {}", zip.display()))?
        .flush()
        .with_context(|| format!("writing {}", zip.display()))?;
    Ok(files)
}

/// The files under `dir`, as paths relative to `base` joined with `/`.
fn collect_files(base: &Path, dir: &Path, files: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(base, &path, files)?;
        } else if kind.is_file() {
            let relative = path.strip_prefix(base)?;
            let parts: Vec<&str> = relative
                .components()
                .map(|part| part.as_os_str().to_str())
                .collect::<Option<_>>()
                .with_context(|| format!("{}: not a UTF-8 path", path.display()))?;
            files.push(parts.join("/"));
        } else {
            bail!("{}: only plain files and folders are packaged", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_loader_and_other_files_are_refused() {
        // This test binary is built for the host's glibc target, so it is dynamic.
        let own = fs::read(std::env::current_exe().expect("own path")).expect("own binary");
        let loader = elf_interpreter(&own).expect("an ELF file").expect("a loader");
        assert!(loader.starts_with('/') && loader.contains("ld-"), "{loader}");
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        assert!(elf_interpreter(&own[..100]).is_err());
    }
}
