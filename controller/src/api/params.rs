//! Request parameters more than one handler reads: the device id of a route, bounded
//! integers, times.

use pifleet_shared::DeviceId;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::problem::Problem;

/// Latest time accepted in a query (the last millisecond of year 9999).
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The `{id}` of a device route, validated when the request is read (400 otherwise).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DevicePath {
    /// Device id: 3–63 of a-z 0-9 and `-`, not starting or ending with `-`.
    #[param(value_type = String, min_length = 3, max_length = 63, pattern = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")]
    pub id: DeviceId,
}

/// A device id given in a body or query, or 400.
pub fn device_id(s: &str) -> Result<DeviceId, Problem> {
    DeviceId::parse(s).map_err(|e| Problem::bad_request(format!("invalid device id: {e}")))
}

/// An optional integer parameter within `min..=max`, or 400.
pub fn bounded(
    name: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, Problem> {
    let v = value.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(Problem::bad_request(format!(
            "{name} must be between {min} and {max}"
        )))
    }
}

/// An id of `digits` lowercase hex digits (`what` names it in the 400), or 400.
pub fn hex_id<'a>(what: &str, id: &'a str, digits: usize) -> Result<&'a str, Problem> {
    if id.len() == digits
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(id)
    } else {
        Err(Problem::bad_request(format!(
            "{what} is {digits} lowercase hex digits"
        )))
    }
}
