//! Which brokers hookrelay runs on (DESIGN §7): RabbitMQ 3.10 or later. Older ones lack what the
//! topology relies on (quorum queues with message TTL arrived in 3.10, so on 3.9 the delay queues
//! would never release a retry; at-least-once dead-lettering too), so they are refused at connect
//! with the version found and the one needed, rather than failing later and quietly.

use lapin::types::{AMQPValue, FieldTable};

/// The oldest RabbitMQ hookrelay runs on.
pub const MINIMUM: (u64, u64) = (3, 10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("the broker is {product} {version}; hookrelay needs RabbitMQ {}.{} or later", MINIMUM.0, MINIMUM.1)]
    TooOld { product: String, version: String },
    #[error("the broker says it is {product:?} version {version:?}; hookrelay needs RabbitMQ {}.{} or later", MINIMUM.0, MINIMUM.1)]
    Unknown { product: String, version: String },
}

/// Checks the `product` and `version` of a broker's server properties (its `connection.start`);
/// returns the version text when it is supported.
pub fn check(server_properties: &FieldTable) -> Result<String, VersionError> {
    let text = |key: &str| match server_properties.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    };
    let (product, version) = (text("product"), text("version"));
    check_version(&product, &version)?;
    Ok(version)
}

/// The pure rule: RabbitMQ, and major.minor at least [`MINIMUM`].
pub fn check_version(product: &str, version: &str) -> Result<(), VersionError> {
    let unknown = || VersionError::Unknown {
        product: product.to_owned(),
        version: version.to_owned(),
    };
    if product != "RabbitMQ" {
        return Err(unknown());
    }
    let (major, minor) = major_minor(version).ok_or_else(unknown)?;
    if (major, minor) < MINIMUM {
        return Err(VersionError::TooOld {
            product: product.to_owned(),
            version: version.to_owned(),
        });
    }
    Ok(())
}

/// `"3.13.7"` → (3, 13); pre-release and build suffixes (`"4.1.0-rc.1"`, `"4.0.5+2.g1"`) do not
/// matter for the comparison.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    #[test]
    fn rabbitmq_older_than_3_10_is_refused_naming_both_versions() {
        let err = check_version("RabbitMQ", "3.9.27").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the broker is RabbitMQ 3.9.27; hookrelay needs RabbitMQ 3.10 or later"
        );
        assert!(check_version("RabbitMQ", "2.8.7").is_err());
    }

    #[test]
    fn rabbitmq_3_10_and_later_is_accepted() {
        for v in [
            "3.10.0",
            "3.10.8",
            "3.13.0",
            "3.13.7",
            "4.0.5",
            "4.1.0-rc.1",
            "10.0.0",
        ] {
            assert_eq!(check_version("RabbitMQ", v), Ok(()), "{v}");
        }
    }

    #[test]
    fn minor_versions_compare_as_numbers_not_text() {
        // "3.9" < "3.10" only numerically.
        assert!(check_version("RabbitMQ", "3.9.0").is_err());
        assert!(check_version("RabbitMQ", "3.10.0").is_ok());
    }

    #[test]
    fn another_product_or_an_unreadable_version_is_refused() {
        assert!(matches!(
            check_version("LavinMQ", "2.0.0"),
            Err(VersionError::Unknown { .. })
        ));
        assert!(matches!(
            check_version("RabbitMQ", "latest"),
            Err(VersionError::Unknown { .. })
        ));
        assert!(check_version("RabbitMQ", "").is_err());
    }

    #[test]
    fn the_version_is_read_from_the_server_properties() {
        let mut props = FieldTable::default();
        props.insert(
            ShortString::from("product"),
            AMQPValue::LongString(LongString::from("RabbitMQ")),
        );
        props.insert(
            ShortString::from("version"),
            AMQPValue::LongString(LongString::from("3.10.8")),
        );
        assert_eq!(check(&props), Ok("3.10.8".to_owned()));
        assert!(check(&FieldTable::default()).is_err());
    }
}
