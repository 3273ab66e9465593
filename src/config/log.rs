//! `[log]`: how log lines are written (`log.format`); the level comes from `RUST_LOG`.
//! Defaults and their documentation: `[log]` in `config/default.toml`.

use super::ConfigError;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Text,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is neither \"text\" nor \"json\"")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// `[log]` as the layers hold it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: LogFormat,
}

impl RawLog {
    pub(super) fn settle(self) -> Result<LogSettings, ConfigError> {
        Ok(LogSettings {
            format: self.format,
        })
    }
}
