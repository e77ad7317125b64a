//! The agent's command line, parsed with lexopt: two subcommands and a handful of options,
//! where clap cost ~110 KB of the agent's 3 MiB budget. `--opt value` and `--opt=value`
//! are both accepted; a usage error is reported with the usage text (exit code 2, as such
//! tools do).

use std::ffi::OsString;
use std::path::PathBuf;

/// Where `agent.toml` is unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/pifleet/agent.toml";

/// The usage text (`--help`).
pub const HELP: &str = "pifleet device agent

Usage: pifleet-agent <COMMAND>

Commands:
  enroll  Enroll this device with a controller using a one-time token
  run     Run the agent

Options:
  -h, --help     Print help
  -V, --version  Print version

pifleet-agent enroll --controller <URL> --token <TOKEN> [OPTIONS]
  --controller <URL>   Controller URL, e.g. https://controller.example:8443
  --token <TOKEN>      The token printed by `pifleet-controller token create`
                       [env: PIFLEET_TOKEN]
  --config <PATH>      [default: /etc/pifleet/agent.toml]
  --device-id <ID>     Device id (default: the hostname, or when the controller has it
                       already, the hostname plus a suffix from the board serial)
  --serial-file <PATH> Where the board serial is [default: /proc/device-tree/serial-number,
                       then /etc/machine-id]
  --interval <SECS>    Telemetry interval in seconds written to the config
  --force              Replace an existing enrollment

pifleet-agent run [--config <PATH>]
  --config <PATH>      [default: /etc/pifleet/agent.toml]
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cli {
    Help,
    Version,
    Enroll {
        controller: String,
        token: String,
        config: PathBuf,
        device_id: Option<String>,
        interval: Option<u32>,
        force: bool,
        serial_file: Option<PathBuf>,
    },
    Run {
        config: PathBuf,
    },
}

/// A command line that does not parse, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Parses the arguments after the program name; `token_env` is `PIFLEET_TOKEN`.
pub fn parse(args: Vec<OsString>, token_env: Option<String>) -> Result<Cli, Usage> {
    use lexopt::prelude::*;
    let bad = |e: lexopt::Error| Usage(e.to_string());
    let text = |v: OsString| {
        v.into_string()
            .map_err(|v| Usage(format!("argument {v:?} is not UTF-8")))
    };
    let mut p = lexopt::Parser::from_args(args);
    let enroll = match p.next().map_err(bad)? {
        None => return Err(Usage("a command is required: enroll or run".into())),
        Some(Short('h') | Long("help")) => return Ok(Cli::Help),
        Some(Short('V') | Long("version")) => return Ok(Cli::Version),
        Some(Value(c)) => match text(c)?.as_str() {
            "help" => return Ok(Cli::Help),
            "enroll" => true,
            "run" => false,
            other => return Err(Usage(format!("unknown command {other:?}"))),
        },
        Some(other) => return Err(Usage(other.unexpected().to_string())),
    };
    let (mut controller, mut token, mut config) = (None, None, None);
    let (mut device_id, mut interval, mut force) = (None, None, false);
    let mut serial_file = None;
    while let Some(arg) = p.next().map_err(bad)? {
        let name = match &arg {
            Long(l) => format!("--{l}"),
            _ => String::new(),
        };
        let slot = match arg {
            Short('h') | Long("help") => return Ok(Cli::Help),
            Long("force") if enroll => {
                force = true;
                continue;
            }
            Long("config") => &mut config,
            Long("controller") if enroll => &mut controller,
            Long("token") if enroll => &mut token,
            Long("device-id") if enroll => &mut device_id,
            Long("interval") if enroll => &mut interval,
            Long("serial-file") if enroll => &mut serial_file,
            other => return Err(Usage(other.unexpected().to_string())),
        };
        let value = text(p.value().map_err(bad)?)?;
        if slot.replace(value).is_some() {
            return Err(Usage(format!("{name} given twice")));
        }
    }
    let config = PathBuf::from(config.unwrap_or_else(|| DEFAULT_CONFIG.to_owned()));
    if !enroll {
        return Ok(Cli::Run { config });
    }
    let interval = interval
        .map(|s| s.parse::<u32>())
        .transpose()
        .map_err(|_| Usage("--interval takes a whole number of seconds".into()))?;
    Ok(Cli::Enroll {
        controller: controller.ok_or_else(|| Usage("--controller is required".into()))?,
        token: token
            .or(token_env)
            .ok_or_else(|| Usage("--token (or PIFLEET_TOKEN) is required".into()))?,
        config,
        device_id,
        interval,
        force,
        serial_file: serial_file.map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn parses_both_commands_with_defaults_and_both_value_forms() {
        assert_eq!(
            parse(args("run"), None),
            Ok(Cli::Run {
                config: DEFAULT_CONFIG.into()
            })
        );
        assert_eq!(
            parse(args("run --config=/x/agent.toml"), None),
            Ok(Cli::Run {
                config: "/x/agent.toml".into()
            })
        );
        assert_eq!(
            parse(
                args(
                    "enroll --controller https://c:8443 --token=t1 --config a.toml \
                     --device-id pi-1 --interval 5 --force --serial-file s.txt"
                ),
                None
            ),
            Ok(Cli::Enroll {
                controller: "https://c:8443".into(),
                token: "t1".into(),
                config: "a.toml".into(),
                device_id: Some("pi-1".into()),
                interval: Some(5),
                force: true,
                serial_file: Some("s.txt".into()),
            })
        );
        // The token may come from the environment; the command line wins.
        let from_env = parse(args("enroll --controller u"), Some("env".into())).unwrap();
        assert!(matches!(from_env, Cli::Enroll { token, .. } if token == "env"));
        let both = parse(
            args("enroll --controller u --token arg"),
            Some("env".into()),
        );
        assert!(matches!(both, Ok(Cli::Enroll { token, .. }) if token == "arg"));
        for help in ["--help", "-h", "help", "run --help", "enroll -h"] {
            assert_eq!(parse(args(help), None), Ok(Cli::Help), "{help}");
        }
        assert_eq!(parse(args("-V"), None), Ok(Cli::Version));
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        for (line, needle) in [
            ("", "a command is required"),
            ("start", "unknown command"),
            ("run --force", "invalid option '--force'"),
            ("run --token t", "invalid option '--token'"),
            ("run --config", "missing argument for option '--config'"),
            ("run --config a --config b", "given twice"),
            ("enroll --token t", "--controller is required"),
            (
                "enroll --controller u",
                "--token (or PIFLEET_TOKEN) is required",
            ),
            ("enroll --controller u --token t --interval x", "--interval"),
            (
                "enroll --controller u --token t --force=yes",
                "unexpected argument for option '--force'",
            ),
        ] {
            let e = parse(args(line), None).unwrap_err();
            assert!(e.0.contains(needle), "{line}: {e}");
        }
    }
}
