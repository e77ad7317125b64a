//! Builds the dashboard (`web/`, TypeScript with Vite) and embeds it: every file of the
//! build goes into the binary with its content type and a gzip copy, so the controller stays
//! one file to deploy. `PIFLEET_WEB_DIST=<dir>` embeds an already built dashboard instead
//! (for builds without Node.js, e.g. cross-compiling from a tree whose dashboard was built
//! elsewhere).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PIFLEET_WEB_DIST");
    let out = std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fail("OUT_DIR is not set: run this through cargo"));
    let dist = match std::env::var_os("PIFLEET_WEB_DIST") {
        Some(d) => PathBuf::from(d),
        None => build_dashboard(&out),
    };
    if !dist.join("index.html").is_file() {
        fail(&format!(
            "{} has no index.html: not a built dashboard",
            dist.display()
        ));
    }
    embed(&dist, &out);
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    std::process::exit(1);
}

fn build_dashboard(out: &Path) -> PathBuf {
    let web = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fail("CARGO_MANIFEST_DIR is not set: run this through cargo"))
        .join("web");
    // The dashboard's inputs. Each must exist: cargo treats a missing path as changed and
    // would rebuild the controller on every build. (The dashboard has no `public/` folder.)
    for f in [
        "package.json",
        "package-lock.json",
        "index.html",
        "vite.config.ts",
        "tsconfig.json",
        "src",
    ] {
        let path = web.join(f);
        if !path.exists() {
            fail(&format!("{} is missing", path.display()));
        }
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".to_owned());
    println!("cargo:rerun-if-env-changed=NPM");
    match Command::new(&npm).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => fail(
            "building the dashboard needs Node.js (20.19 or newer) and npm. `scripts/demo` \
             and `scripts/check` install them when missing (from PyPI into target/node); or \
             install them yourself (Debian 13: `sudo apt-get install nodejs npm`) and build \
             again, or set PIFLEET_WEB_DIST to a dashboard built elsewhere (`npm ci && npm run \
             build` in controller/web, then PIFLEET_WEB_DIST=controller/web/dist).",
        ),
    }
    // `npm ci` when the installed packages do not match the lock file (or are missing).
    let lock = web.join("package-lock.json");
    let installed = web.join("node_modules/.package-lock.json");
    let fresh = match (std::fs::metadata(&lock), std::fs::metadata(&installed)) {
        (Ok(l), Ok(i)) => match (l.modified(), i.modified()) {
            (Ok(l), Ok(i)) => i >= l,
            _ => false,
        },
        _ => false,
    };
    if !fresh {
        run(
            Command::new(&npm)
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&web),
            "npm ci (installing the dashboard's packages from the npm registry)",
        );
    }
    let dist = out.join("web");
    run(
        Command::new(&npm)
            .args(["run", "build", "--", "--outDir"])
            .arg(&dist)
            .arg("--emptyOutDir")
            .current_dir(&web),
        "npm run build (the dashboard)",
    );
    dist
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!("{what} failed ({s}); its output is above")),
        Err(e) => fail(&format!("{what}: cannot run: {e}")),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn files(dir: &Path, acc: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        fail(&format!("cannot read {}", dir.display()));
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, acc);
        } else {
            acc.push(p);
        }
    }
}

/// Writes `assets.rs` (included by `src/api/web.rs`): one entry per file with its URL path,
/// content type, bytes and, when it is smaller, a gzip copy.
fn embed(dist: &Path, out: &Path) {
    let mut all = Vec::new();
    files(dist, &mut all);
    all.sort();
    let gz_dir = out.join("web-gz");
    let _ = std::fs::remove_dir_all(&gz_dir);
    let mut code = String::from("pub static ASSETS: &[Asset] = &[\n");
    for (i, file) in all.iter().enumerate() {
        let Ok(rel) = file.strip_prefix(dist) else {
            continue;
        };
        let url = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
        if url.ends_with(".map") {
            continue;
        }
        let bytes =
            std::fs::read(file).unwrap_or_else(|e| fail(&format!("{}: {e}", file.display())));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let gz = enc
            .write_all(&bytes)
            .and_then(|()| enc.finish())
            .unwrap_or_else(|e| fail(&format!("gzip {}: {e}", file.display())));
        let gz_expr = if gz.len() + 64 < bytes.len() {
            std::fs::create_dir_all(&gz_dir).unwrap_or_else(|e| fail(&e.to_string()));
            let gz_path = gz_dir.join(format!("{i}.gz"));
            std::fs::write(&gz_path, &gz).unwrap_or_else(|e| fail(&e.to_string()));
            format!("Some(include_bytes!({:?}))", gz_path.display().to_string())
        } else {
            "None".to_owned()
        };
        let _ = writeln!(
            code,
            "    Asset {{ path: {url:?}, content_type: {:?}, body: include_bytes!({:?}), gzip: {gz_expr} }},",
            content_type(&url),
            file.display().to_string(),
        );
    }
    code.push_str("];\n");
    std::fs::write(out.join("assets.rs"), code).unwrap_or_else(|e| fail(&e.to_string()));
}
