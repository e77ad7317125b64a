//! Key and certificate rotation while the controller runs. `pifleet-controller rotate …`
//! (a separate process) writes new files and history rows; [`reload`] puts them in use
//! every `auth.key_reload_s`: the access-token keys, the server certificate, the command
//! keys (with their signed history, [`command_keys`]) and the release keys.

pub mod command_keys;
pub mod release_key;
pub mod reload;
