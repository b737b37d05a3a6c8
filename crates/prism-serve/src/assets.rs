//! The UI, embedded in the binary: nothing is read from disk, so no path can escape.

pub const INDEX_HTML: &str = include_str!("../assets/index.html");
pub const APP_JS: &str = include_str!("../assets/app.js");
pub const STYLE_CSS: &str = include_str!("../assets/style.css");
pub const OPENAPI_JSON: &str = include_str!("../assets/openapi.json");
