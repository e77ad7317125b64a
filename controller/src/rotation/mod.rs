//! Key and certificate rotation while the controller runs. `pifleet-controller rotate …`
//! (a separate process) writes new files and history rows; [`reload`] puts them in use
//! every `auth.key_reload_s`: the access-token keys, the server certificate, the command
//! keys (with their signed history, [`command_keys`]) and the release keys; and checks that
//! this controller holds the same key files as the others sharing its database ([`keyset`]).

pub mod command_keys;
pub mod keyset;
pub mod release_key;
pub mod reload;
