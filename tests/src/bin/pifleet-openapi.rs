//! Prints the admin API's OpenAPI document, exactly as `GET /api/v1/openapi.json` serves it,
//! as pretty JSON on standard output, without starting a controller. The dashboard's
//! TypeScript types are generated from it (`npm run api-types` in `controller/web`).
//!
//! ```text
//! pifleet-openapi > openapi.json
//! ```

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `app` serves this document unchanged (its own route is added outside it).
    let (_, doc) = pifleet_controller::api::api_routes();
    let json = match serde_json::to_string_pretty(&doc) {
        Ok(json) => json,
        Err(e) => {
            eprintln!("error: cannot serialize the OpenAPI document: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{json}").and_then(|()| out.flush()) {
        eprintln!("error: cannot write the OpenAPI document: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
