//! Man pages and shell completions for the Debian packages, generated from clap at packaging
//! time (`pifleet-docgen`, run by `scripts/package`), never in the shipped binaries.
//!
//! The agent parses its command line with lexopt to fit its size budget, so its clap
//! `Command` is described here; the tests below hold it to what the agent really accepts
//! (`pifleet_agent::cli::parse`) and to its `--help` text.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, ValueHint};
use clap_complete::Shell;

/// The agent's command line as clap sees it: the same commands, options and defaults as
/// `pifleet_agent::cli`.
pub fn agent_command() -> Command {
    let config = Arg::new("config")
        .long("config")
        .value_name("PATH")
        .value_hint(ValueHint::FilePath)
        .default_value(pifleet_agent::cli::DEFAULT_CONFIG)
        .help("The agent's configuration file");
    Command::new("pifleet-agent")
        .version(env!("CARGO_PKG_VERSION"))
        .about("pifleet device agent")
        .long_about(
            "pifleet device agent: enrolls the device with a pifleet controller, then pushes \
             health metrics over mutual-TLS MQTT, runs signed remote commands and installs \
             signed application releases.",
        )
        .subcommand_required(true)
        .subcommand(
            Command::new("enroll")
                .about("Enroll this device with a controller using a one-time token")
                .arg(
                    Arg::new("controller")
                        .long("controller")
                        .value_name("URL")
                        .value_hint(ValueHint::Url)
                        .required(true)
                        .help("Controller URL, e.g. https://controller.example:8443"),
                )
                .arg(Arg::new("token").long("token").value_name("TOKEN").help(
                    "The token printed by `pifleet-controller token create` \
                             [env: PIFLEET_TOKEN]",
                ))
                .arg(config.clone())
                .arg(
                    Arg::new("device-id")
                        .long("device-id")
                        .value_name("ID")
                        .help(
                            "Device id (default: the hostname, or when the controller has it \
                             already, the hostname plus a suffix from the board serial)",
                        ),
                )
                .arg(
                    Arg::new("serial-file")
                        .long("serial-file")
                        .value_name("PATH")
                        .value_hint(ValueHint::FilePath)
                        .help(
                            "Where the board serial is [default: \
                             /proc/device-tree/serial-number, then /etc/machine-id]",
                        ),
                )
                .arg(
                    Arg::new("interval")
                        .long("interval")
                        .value_name("SECS")
                        .help("Telemetry interval in seconds written to the config"),
                )
                .arg(
                    Arg::new("force")
                        .long("force")
                        .action(ArgAction::SetTrue)
                        .help("Replace an existing enrollment"),
                ),
        )
        .subcommand(Command::new("run").about("Run the agent").arg(config))
}

/// What `write_docs` wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Writes `cmd`'s man pages (one per command and subcommand, section 1) into `out/man/` and
/// its bash, zsh and fish completions into `out/completions/{bash,zsh,fish}/` under the
/// names those shells load them by.
pub fn write_docs(cmd: Command, out: &Path) -> io::Result<Written> {
    let name = cmd.get_name().to_owned();
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    let mut written = Written::default();
    // Built, subcommands have display names such as `pifleet-agent-enroll`: the pages' names.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write_man_pages(&cmd, &man, &mut written.man_pages)?;
    for (shell, dir, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let dir = out.join("completions").join(dir);
        fs::create_dir_all(&dir)?;
        let path = dir.join(file);
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut text);
        fs::write(&path, text)?;
        written.completions.push(path);
    }
    Ok(written)
}

/// One page for `cmd`, then one per visible subcommand, named as git's are
/// (`pifleet-agent-enroll.1`).
fn write_man_pages(cmd: &Command, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("pifleet {}", env!("CARGO_PKG_VERSION")))
        .manual("pifleet manual");
    out.push(man.generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, dir, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use pifleet_agent::cli::{self, Cli};

    use super::*;

    /// A command line for `sub` that gives every one of its options (a value where it takes
    /// one), as the agent's own parser must accept it.
    fn every_option(sub: &Command) -> Vec<OsString> {
        let mut line = vec![OsString::from(sub.get_name())];
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            line.push(format!("--{long}").into());
            if arg.get_action().takes_values() {
                line.push(if long == "interval" { "5" } else { "x" }.into());
            }
        }
        line
    }

    #[test]
    fn the_agents_parser_accepts_every_option_described_here() {
        let cmd = agent_command();
        let subs: Vec<_> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        assert_eq!(subs, ["enroll", "run"]);
        for sub in cmd.get_subcommands() {
            let line = every_option(sub);
            let parsed = cli::parse(line.clone(), None);
            match (sub.get_name(), parsed) {
                ("enroll", Ok(Cli::Enroll { force: true, .. })) => {}
                ("run", Ok(Cli::Run { config })) => assert_eq!(config, PathBuf::from("x")),
                (name, other) => panic!("{name}: {line:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn every_option_of_the_agents_help_is_described_here_and_the_reverse() {
        let cmd = agent_command();
        let mut described: Vec<String> = cmd
            .get_subcommands()
            .flat_map(|s| s.get_arguments())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        described.sort();
        described.dedup();
        let mut in_help: Vec<String> = cli::HELP
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches(',').to_owned())
            .filter(|w| w != "--help" && w != "--version")
            .collect();
        in_help.sort();
        in_help.dedup();
        assert_eq!(described, in_help);
        for sub in cmd.get_subcommands() {
            assert!(
                cli::HELP.contains(&format!("{}  ", sub.get_name())),
                "{} is not in the agent's help",
                sub.get_name()
            );
        }
        let config = cmd
            .find_subcommand("run")
            .and_then(|s| s.get_arguments().find(|a| a.get_id() == "config"))
            .map(|a| a.get_default_values().to_vec());
        assert_eq!(config, Some(vec![cli::DEFAULT_CONFIG.into()]));
    }

    #[test]
    fn writes_a_page_per_command_and_the_completions_each_shell_loads() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_docs(agent_command(), dir.path()).unwrap();
        let names: Vec<_> = written
            .man_pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "pifleet-agent.1",
                "pifleet-agent-enroll.1",
                "pifleet-agent-run.1"
            ]
        );
        let enroll = fs::read_to_string(dir.path().join("man/pifleet-agent-enroll.1")).unwrap();
        assert!(enroll.starts_with(".ie"), "{enroll}");
        assert!(enroll.contains(".TH pifleet-agent-enroll 1"), "{enroll}");
        assert!(enroll.contains("PIFLEET_TOKEN"), "{enroll}");
        let bash = fs::read_to_string(dir.path().join("completions/bash/pifleet-agent")).unwrap();
        assert!(bash.contains("--serial-file"), "{bash}");
        assert!(bash.contains("complete -F"), "{bash}");
        let zsh = fs::read_to_string(dir.path().join("completions/zsh/_pifleet-agent")).unwrap();
        assert!(zsh.starts_with("#compdef pifleet-agent"), "{zsh}");
        let fish =
            fs::read_to_string(dir.path().join("completions/fish/pifleet-agent.fish")).unwrap();
        assert!(fish.contains("-l controller"), "{fish}");
    }
}
