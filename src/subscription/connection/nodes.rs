//! What hookrelay reads about the Redis servers it connects to: the version each reports (the
//! guard of DESIGN §7) and, on a cluster, which nodes are masters.

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisError, Value};

/// The oldest Redis hookrelay runs against (DESIGN §7).
pub const MIN_VERSION: (u32, u32) = (6, 2);

/// The masters of a cluster (host, port), from `CLUSTER SLOTS` (6.2 has no CLUSTER SHARDS).
pub(super) async fn cluster_masters(
    conn: &mut ClusterConnection,
) -> Result<Vec<(String, u16)>, RedisError> {
    let reply = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    Ok(masters_of_slots(&reply))
}

/// The distinct masters in a `CLUSTER SLOTS` reply: each entry is [start, end, [host, port, id,
/// ...], replicas...], the first node being the master.
fn masters_of_slots(reply: &Value) -> Vec<(String, u16)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let mut masters: Vec<(String, u16)> = ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let Value::Array(node) = fields.get(2)? else {
                return None;
            };
            let host = match node.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let port = match node.get(1)? {
                Value::Int(p) => u16::try_from(*p).ok()?,
                _ => return None,
            };
            Some((host, port))
        })
        .collect();
    masters.sort();
    masters.dedup();
    masters
}

/// One `field:value` line of an INFO reply.
pub(super) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Whether a `redis_version` is [`MIN_VERSION`] or later; an unreadable one is not.
pub fn version_supported(version: &str) -> bool {
    let mut parts = version.trim().split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= MIN_VERSION,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_6_2_on_are_supported() {
        for ok in [
            "6.2.0", "6.2.14", "7.0.15", "7.2.4", "8.0.0", "10.1.2", "6.2",
        ] {
            assert!(version_supported(ok), "{ok}");
        }
        for old in ["6.0.16", "5.0.7", "4.0.9", "6.1.99", "2.8.24"] {
            assert!(!version_supported(old), "{old}");
        }
        for unreadable in ["", "unknown", "seven", "7", ".2.0"] {
            assert!(!version_supported(unreadable), "{unreadable}");
        }
    }

    #[test]
    fn the_version_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(info_field(info, "redis_version"), Some("7.0.15"));
        assert_eq!(info_field(info, "redis_mode"), None);
    }

    #[test]
    fn cluster_masters_are_the_first_node_of_each_slot_range() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |start, end, master: Value, replica: Value| {
            Value::Array(vec![Value::Int(start), Value::Int(end), master, replica])
        };
        let reply = Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7001), node("127.0.0.1", 7004)),
            range(
                5461,
                10922,
                node("127.0.0.1", 7002),
                node("127.0.0.1", 7005),
            ),
            range(
                10923,
                16000,
                node("127.0.0.1", 7003),
                node("127.0.0.1", 7006),
            ),
            range(
                16001,
                16383,
                node("127.0.0.1", 7003),
                node("127.0.0.1", 7006),
            ),
        ]);

        let masters = masters_of_slots(&reply);

        let expected: Vec<(String, u16)> = [7001, 7002, 7003]
            .into_iter()
            .map(|p| ("127.0.0.1".to_owned(), p))
            .collect();
        assert_eq!(masters, expected);
    }
}
