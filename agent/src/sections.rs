//! Readers of the simple `agent.toml` sections (`[controller]`, `[tls]`, `[telemetry]`,
//! `[spool]`, `[mqtt]`), written by hand: one visitor reads a table key by key, refusing
//! unknown keys and reporting missing required ones, like the derived readers did, at a
//! fraction of their binary size (the agent's budget is tight; see docs/BENCHMARKS.md).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::config::{ControllerConfig, MqttSection, SpoolSection, TelemetryConfig, TlsFiles};

/// A section read key by key.
pub trait Section: Default {
    /// Every key, for the unknown-key error.
    const FIELDS: &'static [&'static str];
    /// Keys without a default.
    const REQUIRED: &'static [&'static str] = &[];
    /// Reads the value of `key`; false for a key the section does not have.
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

struct SectionVisitor<T>(PhantomData<T>);

impl<'de, T: Section> Visitor<'de> for SectionVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut s = T::default();
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !s.read(&key, &mut map)? {
                return Err(de::Error::unknown_field(&key, T::FIELDS));
            }
            seen.push(key);
        }
        if let Some(missing) = T::REQUIRED.iter().find(|r| !seen.iter().any(|k| k == *r)) {
            return Err(de::Error::missing_field(missing));
        }
        Ok(s)
    }
}

/// Deserializes a [`Section`] (for `impl Deserialize`).
pub fn read<'de, D: Deserializer<'de>, T: Section>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(SectionVisitor(PhantomData))
}

macro_rules! deserialize_section {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                read(d)
            }
        }
    )*};
}
deserialize_section!(
    ControllerConfig,
    TlsFiles,
    TelemetryConfig,
    SpoolSection,
    MqttSection
);

impl Section for ControllerConfig {
    const FIELDS: &'static [&'static str] = &["url", "mqtt_host", "mqtt_port"];
    const REQUIRED: &'static [&'static str] = Self::FIELDS;
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "url" => self.url = map.next_value()?,
            "mqtt_host" => self.mqtt_host = map.next_value()?,
            "mqtt_port" => self.mqtt_port = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Section for TlsFiles {
    const FIELDS: &'static [&'static str] = &["ca", "cert", "key", "command_key", "release_keys"];
    const REQUIRED: &'static [&'static str] = &["ca", "cert", "key", "command_key"];
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "ca" => self.ca = map.next_value()?,
            "cert" => self.cert = map.next_value()?,
            "key" => self.key = map.next_value()?,
            "command_key" => self.command_key = map.next_value()?,
            "release_keys" => self.release_keys = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Section for TelemetryConfig {
    const FIELDS: &'static [&'static str] = &["interval_s", "temperature_file"];
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "interval_s" => self.interval_s = map.next_value()?,
            "temperature_file" => self.temperature_file = Some(map.next_value()?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Section for SpoolSection {
    const FIELDS: &'static [&'static str] = &["dir", "max_bytes", "sync_interval_s"];
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "dir" => self.dir = map.next_value()?,
            "max_bytes" => self.max_bytes = map.next_value()?,
            "sync_interval_s" => self.sync_interval_s = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Section for MqttSection {
    const FIELDS: &'static [&'static str] = &[
        "keep_alive_s",
        "backoff_max_s",
        "renew_check_s",
        "renew_answer_timeout_s",
        "renew_backoff_max_s",
    ];
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let slot = match key {
            "keep_alive_s" => &mut self.keep_alive_s,
            "backoff_max_s" => &mut self.backoff_max_s,
            "renew_check_s" => &mut self.renew_check_s,
            "renew_answer_timeout_s" => &mut self.renew_answer_timeout_s,
            "renew_backoff_max_s" => &mut self.renew_backoff_max_s,
            _ => return Ok(false),
        };
        *slot = map.next_value()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct File {
        controller: Option<ControllerConfig>,
        tls: Option<TlsFiles>,
        #[serde(default)]
        telemetry: TelemetryConfig,
        #[serde(default)]
        spool: SpoolSection,
        #[serde(default)]
        mqtt: MqttSection,
    }

    fn parse(text: &str) -> Result<File, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn sections_read_every_key_default_the_rest_and_refuse_unknown_keys() {
        let f = parse(
            "[controller]\nurl = \"https://c:8443\"\nmqtt_host = \"c\"\nmqtt_port = 8883\n\
             [tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\ncommand_key = \"d\"\n\
             [telemetry]\ntemperature_file = \"/t\"\n[spool]\nmax_bytes = 70000\n\
             [mqtt]\nrenew_check_s = 5\n",
        )
        .unwrap();
        let c = f.controller.unwrap();
        assert_eq!(
            (c.url.as_str(), c.mqtt_host.as_str(), c.mqtt_port),
            ("https://c:8443", "c", 8883)
        );
        let t = f.tls.unwrap();
        assert_eq!(t.command_key, std::path::Path::new("d"));
        assert_eq!(
            t.release_keys,
            [std::path::PathBuf::from("release-keys.pem")]
        );
        assert_eq!(
            f.telemetry.interval_s,
            TelemetryConfig::default().interval_s
        );
        assert_eq!(
            f.telemetry.temperature_file.as_deref(),
            Some(std::path::Path::new("/t"))
        );
        assert_eq!(f.spool.max_bytes, 70_000);
        assert_eq!(f.spool.dir, SpoolSection::default().dir);
        assert_eq!(f.mqtt.renew_check_s, 5);
        assert_eq!(f.mqtt.keep_alive_s, MqttSection::default().keep_alive_s);

        for (bad, needle) in [
            ("[mqtt]\nshell = 1\n", "shell"),
            ("[mqtt]\nkeep_alive_s = \"x\"\n", "keep_alive_s"),
            ("[spool]\nmax_bytes = -1\n", "max_bytes"),
            (
                "[controller]\nurl = \"u\"\nmqtt_host = \"h\"\n",
                "mqtt_port",
            ),
            (
                "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
                "command_key",
            ),
            ("mqtt = 3\n", "table"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }
}
