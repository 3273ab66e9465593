//! `hookrelay config show|check`: the effective configuration (defaults → file → environment)
//! with secrets redacted, and a validation that names the offending key.

use crate::config::Settings;
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Print the effective configuration as TOML (or JSON), secrets redacted.
    #[command(
        after_help = "Example:\n  HOOKRELAY__AMQP__PREFIX=staging hookrelay config show --json"
    )]
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration; exit 78 naming the key when it is invalid.
    #[command(after_help = "Example:\n  hookrelay --config /etc/hookrelay.toml config check")]
    Check {
        #[arg(long)]
        json: bool,
    },
}

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

pub fn run(file: Option<&Path>, action: ConfigAction) -> anyhow::Result<()> {
    // Validate first: an invalid configuration is exit 78 whatever is asked.
    Settings::load(file)?;
    match action {
        ConfigAction::Show { json } => {
            let mut doc: serde_json::Value =
                Settings::layers(file, std::env::vars())?.try_deserialize()?;
            redact(&mut doc);
            if json {
                super::print_json(&doc);
            } else {
                print!("{}", toml::to_string_pretty(&doc)?);
            }
        }
        ConfigAction::Check { json } => {
            let from_env: Vec<String> = std::env::vars()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("HOOKRELAY__"))
                .collect();
            if json {
                super::print_json(&serde_json::json!({
                    "valid": true,
                    "file": file.map(|f| f.display().to_string()),
                    "environment": from_env,
                }));
            } else {
                let file = file.map_or("no file".to_owned(), |f| f.display().to_string());
                println!(
                    "configuration is valid (defaults, {file}, {} environment variables)",
                    from_env.len()
                );
            }
        }
    }
    Ok(())
}

/// Blanks every secret in place: values of keys that name a token, secret or password, and the
/// password of any URL (e.g. `amqp://user:password@host`). Walks with an explicit stack.
pub fn redact(doc: &mut serde_json::Value) {
    let mut stack = vec![(String::new(), doc)];
    while let Some((key, value)) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                stack.extend(map.iter_mut().map(|(k, v)| (k.clone(), v)));
            }
            serde_json::Value::Array(items) => {
                stack.extend(items.iter_mut().map(|v| (key.clone(), v)));
            }
            serde_json::Value::String(text) => {
                let secret_key = ["token", "secret", "password"]
                    .iter()
                    .any(|s| key.to_lowercase().contains(s));
                if secret_key && !text.is_empty() {
                    *text = REDACTED.to_owned();
                } else if let Some(clean) = url_without_password(text) {
                    *text = clean;
                }
            }
            _ => {}
        }
    }
}

fn url_without_password(text: &str) -> Option<String> {
    let mut url = url::Url::parse(text).ok()?;
    url.password()?;
    // Plain letters: a URL would percent-encode the brackets of REDACTED.
    url.set_password(Some("redacted")).ok()?;
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_passwords_are_redacted_and_nothing_else() {
        let mut doc = serde_json::json!({
            "amqp": {"url": "amqp://hr:s3cret@rabbit:5672/%2f", "urls": ["amqp://a:pw@n1", "amqp://n2"], "prefix": "hookrelay"},
            "redis": {"url": "redis://:pw2@redis:6379/0", "secret_key": "c2VjcmV0", "prefix": "hookrelay"},
            "api": {"admin_token": "t0ken-value", "listen": "127.0.0.1:8080"},
        });

        redact(&mut doc);

        let text = doc.to_string();
        for secret in ["s3cret", "pw@", "pw2", "c2VjcmV0", "t0ken-value"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(doc["amqp"]["url"], "amqp://hr:redacted@rabbit:5672/%2f");
        assert_eq!(doc["amqp"]["urls"][1], "amqp://n2");
        assert_eq!(doc["api"]["admin_token"], REDACTED);
        assert_eq!(doc["api"]["listen"], "127.0.0.1:8080");
        assert_eq!(doc["redis"]["prefix"], "hookrelay");
    }

    #[test]
    fn an_empty_secret_stays_empty_so_that_it_shows_as_unset() {
        let mut doc = serde_json::json!({"api": {"admin_token": ""}});
        redact(&mut doc);
        assert_eq!(doc["api"]["admin_token"], "");
    }
}
