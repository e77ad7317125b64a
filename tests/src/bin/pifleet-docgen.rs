//! Writes the man pages and the bash, zsh and fish completions of `pifleet-controller` and
//! `pifleet-agent` for the Debian packages (`scripts/package` runs it). It is a program of
//! its own so that neither shipped binary links the generators: the agent's size budget has
//! no room for them.
//!
//! ```text
//! pifleet-docgen OUT_DIR   # OUT_DIR/{controller,agent}/{man,completions/{bash,zsh,fish}}/
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory as _;
use pifleet_tests::docgen;

// The controller's command line lives in its binary crate (`main.rs` and `cli/`), which no
// other crate can import; its definitions are compiled here from the same files. Only the
// argument types are used: the commands' code is dead here.
#[allow(dead_code)]
#[path = "../../../controller/src/cli/mod.rs"]
mod controller_cli;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: pifleet-docgen OUT_DIR");
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    for (dir, cmd) in [
        ("controller", controller_cli::Cli::command()),
        ("agent", docgen::agent_command()),
    ] {
        let name = cmd.get_name().to_owned();
        match docgen::write_docs(cmd, &out.join(dir)) {
            Ok(w) => eprintln!(
                "{name}: {} man pages, {} completion scripts",
                w.man_pages.len(),
                w.completions.len()
            ),
            Err(e) => {
                eprintln!(
                    "error: cannot write {name}'s docs under {}: {e}",
                    out.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
