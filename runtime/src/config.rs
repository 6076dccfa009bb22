//! The script config: a wrangler-style `wrangler.jsonc` / `wrangler.json` / `wrangler.toml`.
//!
//! Only what the runtime needs is read: `name`, `main`, `vpc_services`, `vpc_networks` and
//! `limits`. Parsing goes raw →
//! validated: the file is parsed into a generic value first (syntax errors carry line and
//! column), then every field is checked and **all** problems are reported at once, each
//! naming its field path, what is wrong and what to do. Unknown top-level keys (wrangler has
//! many: `compatibility_date`, `routes`, …) are logged and ignored; unknown keys inside a
//! `vpc_services` or `vpc_networks` entry are errors, because a typo there silently drops a
//! binding. Binding names are unique across both lists.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::limits::{Isolation, LIMIT_KEYS, Limits};

/// A validated script config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptConfig {
    /// Script name (`name`): letters, digits, `-` and `_`, at most 63 characters.
    pub name: String,
    /// The script's wasm component, or the entry module of a JavaScript / TypeScript script
    /// (`main`), resolved against the config file's directory. [`ScriptConfig::component`]
    /// gives the component either way.
    pub main: PathBuf,
    /// Declared VPC Service bindings (`vpc_services`), in file order; names are unique.
    pub vpc_services: Vec<VpcServiceBinding>,
    /// Declared VPC Network bindings (`vpc_networks`), in file order; names are unique
    /// across both lists.
    pub vpc_networks: Vec<VpcNetworkBinding>,
    /// Per-request limits (`limits`); absent keys keep their defaults.
    pub limits: Limits,
}

/// One `vpc_services` entry: the script reaches service `service_id` as `env[binding]`.
///
/// In the file an entry names its service by `service_id` or by `service` (its name); names
/// are resolved to ids when the config is loaded ([`ScriptConfig::load_resolving`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcServiceBinding {
    /// Name the script uses (a JavaScript identifier, e.g. `API`).
    pub binding: String,
    /// The VPC Service it points at.
    pub service_id: Uuid,
}

/// One `vpc_networks` entry: the script reaches the network `network` (a tunnel, the
/// account's networks, or one virtual network) as `env[binding]`; the URL or `connect()`
/// address picks the destination inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcNetworkBinding {
    /// Name the script uses (a JavaScript identifier, e.g. `NET`).
    pub binding: String,
    /// `tunnel_id` or `network_id`.
    pub network: wvpc_schemas::NetworkTarget,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The file name does not end in `.jsonc`, `.json` or `.toml`.
    #[error(
        "config {}: unsupported file type (use a wrangler.jsonc, wrangler.json or wrangler.toml)",
        path.display()
    )]
    UnsupportedFormat {
        /// The config file.
        path: PathBuf,
    },
    /// The file is not well-formed JSON(C) / TOML.
    #[error(
        "config {}: {format} syntax error on line {line} column {column}: {message}",
        path.display()
    )]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// `JSON` or `TOML`.
        format: &'static str,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The file parsed, but its content is invalid.
    #[error("config {} is invalid:{}", path.display(), ProblemList(.problems))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<ConfigProblem>,
    },
}

/// One invalid field: `field` is a path such as `vpc_services[1].service_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong, and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

struct ProblemList<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

const SERVICE_ID_HINT: &str = "use the service_id printed by `wvpc service create`";
const KNOWN_ENTRY_KEYS: &str = "binding, service_id, service, remote";
const KNOWN_NETWORK_KEYS: &str = "binding, tunnel_id, network_id, remote";
const NETWORK_HINT: &str = "give tunnel_id (a tunnel's id, as `wvpc tunnel list` prints) or \
     network_id (\"cf1:network\" for the account's default virtual network, or \
     \"cf1:vnet:<id>\" as `wvpc vnet list` prints)";
const MAX_NAME_LEN: usize = 63;

#[derive(Clone, Copy)]
enum Format {
    Json,
    Toml,
}

impl Format {
    fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "jsonc" | "json" => Some(Self::Json),
            "toml" => Some(Self::Toml),
            _ => None,
        }
    }

    /// What the user calls a map in this format.
    const fn map_word(self) -> &'static str {
        match self {
            Self::Json => "object",
            Self::Toml => "table",
        }
    }
}

/// Resolves a `service` name of a `vpc_services` entry to the service's id; `Err` says why it
/// cannot (unknown, ambiguous, no directory).
pub type ServiceResolver<'a> = &'a dyn Fn(&str) -> Result<Uuid, String>;

impl ScriptConfig {
    /// Whether `main` is a JavaScript or TypeScript entry, built into a component by
    /// [`ScriptConfig::component`].
    pub fn is_javascript(&self) -> bool {
        wvpc_js_build::is_javascript(&self.main)
    }

    /// The names of every binding (`vpc_services`, then `vpc_networks`).
    pub fn binding_names(&self) -> impl Iterator<Item = &str> {
        self.vpc_services
            .iter()
            .map(|b| b.binding.as_str())
            .chain(self.vpc_networks.iter().map(|b| b.binding.as_str()))
    }

    /// The script's component: `main` itself, or `main` built from JavaScript (blocking: it
    /// runs node, and compiles for seconds unless the build is cached).
    pub fn component(&self) -> Result<PathBuf, wvpc_js_build::JsBuildError> {
        Ok(self
            .build()?
            .map_or_else(|| self.main.clone(), |built| built.wasm))
    }

    /// Builds a JavaScript `main` (`None` for a wasm one), with the sources it read.
    pub fn build(&self) -> Result<Option<wvpc_js_build::BuiltScript>, wvpc_js_build::JsBuildError> {
        if !self.is_javascript() {
            return Ok(None);
        }
        wvpc_js_build::JsBuilder::from_env()
            .with_bindings(self.binding_names().map(str::to_owned))
            .build_entry(&self.main)
            .map(Some)
    }
}

impl ScriptConfig {
    /// Reads and validates the config at `path`. `main` is resolved against `path`'s directory
    /// and must exist. Entries that bind by service name are refused: use
    /// [`ScriptConfig::load_resolving`] with a directory.
    pub fn load(path: &Path) -> Result<ScriptConfig, ConfigError> {
        Self::load_resolving(path, &|_| {
            Err(
                "binding by service name needs the directory to resolve it (run the script \
                 with `wvpc dev` or deploy it with `wvpc deploy`), or give service_id"
                    .to_owned(),
            )
        })
    }

    /// Like [`ScriptConfig::load`], resolving `service` names with `resolve`.
    pub fn load_resolving(
        path: &Path,
        resolve: ServiceResolver<'_>,
    ) -> Result<ScriptConfig, ConfigError> {
        let (_, text) = read_text(path)?;
        Self::from_text(path, &text, resolve)
    }

    /// Validates `text` as the content of the config file at `path` (which gives the format
    /// by its extension and the directory `main` is resolved against; it is not read).
    pub fn from_text(
        path: &Path,
        text: &str,
        resolve: ServiceResolver<'_>,
    ) -> Result<ScriptConfig, ConfigError> {
        let format =
            Format::of(path).ok_or_else(|| ConfigError::UnsupportedFormat { path: path.into() })?;
        let raw = parse(path, format, text)?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        validate(&raw, format, base, resolve).map_err(|problems| ConfigError::Invalid {
            path: path.into(),
            problems,
        })
    }

    /// The service a binding name points at, if the script declares it.
    pub fn service_of(&self, binding: &str) -> Option<Uuid> {
        self.vpc_services
            .iter()
            .find(|b| b.binding == binding)
            .map(|b| b.service_id)
    }
}

/// A file in the config's syntax (JSON, JSONC or TOML, by its extension) parsed into a generic
/// value, for files that share the config's syntax and its error reporting (the mock file of
/// `wvpc dev --mock`): syntax errors carry line and column, content problems are reported as
/// [`ConfigError::Invalid`] with field paths.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigValue {
    /// The parsed content.
    pub value: Value,
    /// Whether the file is TOML (maps are "tables" in messages).
    pub toml: bool,
}

impl ConfigValue {
    /// Reads and parses `path`. `Ok(None)`: its extension is not `.jsonc`, `.json` or `.toml`.
    pub fn read(path: &Path) -> Result<Option<ConfigValue>, ConfigError> {
        let Some(format) = Format::of(path) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Ok(Some(ConfigValue {
            value: parse(path, format, &text)?,
            toml: matches!(format, Format::Toml),
        }))
    }

    /// What `value` is, for messages ("a string", "an object" / "a table", …).
    pub fn kind(&self, value: &Value) -> &'static str {
        kind(
            value,
            if self.toml {
                Format::Toml
            } else {
                Format::Json
            },
        )
    }
}

/// The bindings of a script config alone (`vpc_services` and `vpc_networks`), for tools that
/// need only them (`wvpc types`): `name`, `main` and `limits` are not read, so a config whose
/// `main` does not exist yet (a script not written or not built) loads. The binding sections
/// are validated exactly as [`ScriptConfig::load`] does; `service` names are not resolved
/// (no directory is needed), and their bindings carry the nil UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptBindings {
    /// Declared VPC Service bindings (`vpc_services`), in file order.
    pub vpc_services: Vec<VpcServiceBinding>,
    /// Declared VPC Network bindings (`vpc_networks`), in file order.
    pub vpc_networks: Vec<VpcNetworkBinding>,
}

impl ScriptBindings {
    /// Reads the config at `path` and validates its binding sections.
    pub fn load(path: &Path) -> Result<ScriptBindings, ConfigError> {
        let (format, text) = read_text(path)?;
        let raw = parse(path, format, &text)?;
        let mut problems = Problems::default();
        let bindings = match root_object(&raw, format, &mut problems) {
            None => None,
            Some(root) => {
                let mut declared = HashMap::new();
                // Which service a name means does not matter to the bindings' types.
                let vpc_services = validate_vpc_services(
                    root,
                    format,
                    &|_| Ok(Uuid::nil()),
                    &mut declared,
                    &mut problems,
                );
                let vpc_networks =
                    validate_vpc_networks(root, format, &mut declared, &mut problems);
                Some(ScriptBindings {
                    vpc_services,
                    vpc_networks,
                })
            }
        };
        match bindings {
            Some(bindings) if problems.0.is_empty() => Ok(bindings),
            _ => Err(ConfigError::Invalid {
                path: path.into(),
                problems: problems.0,
            }),
        }
    }

    /// Every binding name, `vpc_services` first, each in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vpc_services
            .iter()
            .map(|b| b.binding.as_str())
            .chain(self.vpc_networks.iter().map(|b| b.binding.as_str()))
    }
}

/// The text of the config file at `path`, and its format (checked before the file is read).
fn read_text(path: &Path) -> Result<(Format, String), ConfigError> {
    let format =
        Format::of(path).ok_or_else(|| ConfigError::UnsupportedFormat { path: path.into() })?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    Ok((format, text))
}

/// The config's top-level object; anything else is a problem of `(top level)`.
fn root_object<'a>(
    raw: &'a Value,
    format: Format,
    problems: &mut Problems,
) -> Option<&'a Map<String, Value>> {
    let root = raw.as_object();
    if root.is_none() {
        problems.push(
            "(top level)",
            format!(
                "expected {}, found {}",
                article(format.map_word()),
                kind(raw, format)
            ),
        );
    }
    root
}

fn parse(path: &Path, format: Format, text: &str) -> Result<Value, ConfigError> {
    match format {
        // wrangler reads .json files as JSONC too (comments, trailing commas).
        Format::Json => jsonc_parser::parse_to_serde_value::<Value>(text, &Default::default())
            .map_err(|e| ConfigError::Syntax {
                path: path.into(),
                format: "JSON",
                line: e.line_display(),
                column: e.column_display(),
                message: e.kind().to_string(),
            }),
        Format::Toml => {
            let table = toml::from_str::<toml::Table>(text).map_err(|e| {
                let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
                ConfigError::Syntax {
                    path: path.into(),
                    format: "TOML",
                    line,
                    column,
                    message: e.message().trim().to_owned(),
                }
            })?;
            // Every TOML value has a JSON shape (datetimes become objects, which no field we
            // read accepts), so one validator serves both formats.
            serde_json::to_value(table).map_err(|e| ConfigError::Syntax {
                path: path.into(),
                format: "TOML",
                line: 1,
                column: 1,
                message: e.to_string(),
            })
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn validate(
    raw: &Value,
    format: Format,
    base: &Path,
    resolve: ServiceResolver<'_>,
) -> Result<ScriptConfig, Vec<ConfigProblem>> {
    let mut problems = Problems::default();
    let Some(root) = root_object(raw, format, &mut problems) else {
        return Err(problems.0);
    };

    for key in root.keys() {
        // `routes`, `route` and `workers_dev` are read by `wvpc deploy` (the runtime serves a
        // deployed script by them; `wvpc dev` serves its one script whatever the host).
        if !matches!(
            key.as_str(),
            "name"
                | "main"
                | "vpc_services"
                | "vpc_networks"
                | "limits"
                | "routes"
                | "route"
                | "workers_dev"
        ) {
            tracing::warn!(key = %key, "ignoring config key that workers-vpc does not use");
        }
    }

    let name = validate_name(root, format, &mut problems);
    let main = validate_main(root, format, base, &mut problems);
    let mut declared = HashMap::new();
    let vpc_services = validate_vpc_services(root, format, resolve, &mut declared, &mut problems);
    let vpc_networks = validate_vpc_networks(root, format, &mut declared, &mut problems);
    let limits = validate_limits(root, format, &mut problems);

    match (name, main, problems.0.is_empty()) {
        (Some(name), Some(main), true) => Ok(ScriptConfig {
            vpc_networks,
            name,
            main,
            vpc_services,
            limits,
        }),
        _ => Err(problems.0),
    }
}

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// The string at `field`, or a problem if it is absent or not a string.
    fn string<'v>(
        &mut self,
        map: &'v Map<String, Value>,
        key: &str,
        field: &str,
        format: Format,
        missing_hint: &str,
    ) -> Option<&'v str> {
        match map.get(key) {
            None => {
                self.push(field, format!("missing ({missing_hint})"));
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.push(
                    field,
                    format!("expected a string, found {}", kind(other, format)),
                );
                None
            }
        }
    }
}

fn validate_name(
    root: &Map<String, Value>,
    format: Format,
    problems: &mut Problems,
) -> Option<String> {
    let name = problems.string(
        root,
        "name",
        "name",
        format,
        "the script's name, e.g. my-worker",
    )?;
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        problems.push(
            "name",
            format!(
                "{name:?} is not a valid script name (use letters, digits, - and _, at most \
                 {MAX_NAME_LEN} characters)"
            ),
        );
        return None;
    }
    Some(name.to_owned())
}

fn validate_main(
    root: &Map<String, Value>,
    format: Format,
    base: &Path,
    problems: &mut Problems,
) -> Option<PathBuf> {
    let main = problems.string(
        root,
        "main",
        "main",
        format,
        "the path of the script's .wasm component, or of its JavaScript / TypeScript entry \
         (src/index.js), relative to this file",
    )?;
    let resolved = base.join(main);
    if main.is_empty() || resolved.is_dir() {
        problems.push(
            "main",
            format!(
                "{main:?} is not a file (point it at the .wasm component or the JavaScript entry)"
            ),
        );
        return None;
    }
    if !resolved.exists() {
        problems.push(
            "main",
            format!(
                "file {main:?} does not exist (resolved to {:?}; {})",
                resolved.display().to_string(),
                match wvpc_js_build::is_javascript(&resolved) {
                    true => "write the script's entry module there",
                    false => "build the script first",
                }
            ),
        );
        return None;
    }
    Some(resolved)
}

/// `binding` of an entry at `at`: a JavaScript identifier not declared before (`declared`
/// maps each name to the entry that declared it, across `vpc_services` and `vpc_networks`).
fn binding_name(
    entry: &Map<String, Value>,
    at: &str,
    format: Format,
    declared: &mut HashMap<String, String>,
    problems: &mut Problems,
) -> Option<String> {
    let binding_field = format!("{at}.binding");
    let name = problems.string(
        entry,
        "binding",
        &binding_field,
        format,
        "the name the script uses, e.g. API",
    )?;
    if !is_binding_name(name) {
        problems.push(
            &binding_field,
            format!(
                "{name:?} is not a valid binding name (use a JavaScript identifier: letters, \
                 digits, _ or $, not starting with a digit, e.g. API)"
            ),
        );
        return None;
    }
    if let Some(first) = declared.get(name) {
        problems.push(
            &binding_field,
            format!("{name:?} is already declared by {first}"),
        );
        return None;
    }
    declared.insert(name.to_owned(), at.to_owned());
    Some(name.to_owned())
}

/// `remote` (wrangler's flag for remote bindings in `wrangler dev`): here every binding is
/// real, so it has no effect, but it must be a boolean.
fn check_remote(value: &Value, at: &str, format: Format, problems: &mut Problems) {
    if !value.is_boolean() {
        problems.push(
            format!("{at}.remote"),
            format!("expected a boolean, found {}", kind(value, format)),
        );
    }
}

/// `vpc_networks`: `{binding, tunnel_id}` or `{binding, network_id}`, exactly one of the two.
fn validate_vpc_networks(
    root: &Map<String, Value>,
    format: Format,
    declared: &mut HashMap<String, String>,
    problems: &mut Problems,
) -> Vec<VpcNetworkBinding> {
    use wvpc_schemas::NetworkTarget;
    let entries = match root.get("vpc_networks") {
        None => return Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            problems.push(
                "vpc_networks",
                format!(
                    "expected an array of {{binding, tunnel_id | network_id}} {}s, found {}",
                    format.map_word(),
                    kind(other, format)
                ),
            );
            return Vec::new();
        }
    };
    let mut bindings = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("vpc_networks[{i}]");
        let Some(entry) = entry.as_object() else {
            problems.push(
                at,
                format!(
                    "expected {} with \"binding\" and \"tunnel_id\" or \"network_id\", found {}",
                    article(format.map_word()),
                    kind(entry, format)
                ),
            );
            continue;
        };
        for (key, value) in entry {
            match key.as_str() {
                "binding" | "tunnel_id" | "network_id" => {}
                "remote" => check_remote(value, &at, format, problems),
                _ => problems.push(
                    format!("{at}.{key}"),
                    format!("unknown key (allowed keys: {KNOWN_NETWORK_KEYS})"),
                ),
            }
        }
        let binding = binding_name(entry, &at, format, declared, problems);
        let network = match (
            entry.contains_key("tunnel_id"),
            entry.contains_key("network_id"),
        ) {
            (true, true) => {
                problems.push(
                    &at,
                    "give either tunnel_id or network_id, not both (tunnel_id reaches one \
                     tunnel; network_id a virtual network, whose routes pick the tunnel)",
                );
                None
            }
            (false, false) => {
                problems.push(
                    &at,
                    format!("missing tunnel_id or network_id; {NETWORK_HINT}"),
                );
                None
            }
            (true, false) => {
                let field = format!("{at}.tunnel_id");
                problems
                    .string(entry, "tunnel_id", &field, format, NETWORK_HINT)
                    .and_then(|id| match Uuid::try_parse(id) {
                        Ok(id) => Some(NetworkTarget::Tunnel(id)),
                        Err(_) => {
                            problems.push(
                                &field,
                                format!(
                                    "{id:?} is not a tunnel id (a UUID, as `wvpc tunnel list` \
                                     prints)"
                                ),
                            );
                            None
                        }
                    })
            }
            (false, true) => {
                let field = format!("{at}.network_id");
                problems
                    .string(entry, "network_id", &field, format, NETWORK_HINT)
                    .and_then(|id| match NetworkTarget::parse_network_id(id) {
                        Ok(target) => Some(target),
                        Err(err) => {
                            problems.push(&field, err.to_string());
                            None
                        }
                    })
            }
        };
        if let (Some(binding), Some(network)) = (binding, network) {
            bindings.push(VpcNetworkBinding { binding, network });
        }
    }
    bindings
}

fn validate_vpc_services(
    root: &Map<String, Value>,
    format: Format,
    resolve: ServiceResolver<'_>,
    declared: &mut HashMap<String, String>,
    problems: &mut Problems,
) -> Vec<VpcServiceBinding> {
    let entries = match root.get("vpc_services") {
        None => return Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            problems.push(
                "vpc_services",
                format!(
                    "expected an array of {{binding, service_id}} {}s, found {}",
                    format.map_word(),
                    kind(other, format)
                ),
            );
            return Vec::new();
        }
    };

    let mut bindings = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("vpc_services[{i}]");
        let Some(entry) = entry.as_object() else {
            problems.push(
                at,
                format!(
                    "expected {} with \"binding\" and \"service_id\", found {}",
                    article(format.map_word()),
                    kind(entry, format)
                ),
            );
            continue;
        };
        for (key, value) in entry {
            match key.as_str() {
                "binding" | "service_id" | "service" => {}
                "remote" => check_remote(value, &at, format, problems),
                _ => problems.push(
                    format!("{at}.{key}"),
                    format!("unknown key (allowed keys: {KNOWN_ENTRY_KEYS})"),
                ),
            }
        }

        let binding = binding_name(entry, &at, format, declared, problems);

        let id_field = format!("{at}.service_id");
        let service_id = if entry.contains_key("service") {
            let name_field = format!("{at}.service");
            if entry.contains_key("service_id") {
                problems.push(
                    &name_field,
                    "give either service_id or service (the service's name), not both",
                );
                None
            } else {
                problems
                    .string(entry, "service", &name_field, format, SERVICE_ID_HINT)
                    .and_then(|name| match resolve(name) {
                        Ok(id) => Some(id),
                        Err(why) => {
                            problems.push(&name_field, why);
                            None
                        }
                    })
            }
        } else {
            problems
                .string(entry, "service_id", &id_field, format, SERVICE_ID_HINT)
                .and_then(|id| match Uuid::try_parse(id) {
                    Ok(uuid) => Some(uuid),
                    Err(_) => {
                        problems.push(
                            &id_field,
                            format!("{id:?} is not a UUID ({SERVICE_ID_HINT})"),
                        );
                        None
                    }
                })
        };

        if let (Some(binding), Some(service_id)) = (binding, service_id) {
            bindings.push(VpcServiceBinding {
                binding,
                service_id,
            });
        }
    }
    bindings
}

/// The `limits` section: each key an integer in its range; unknown keys are errors (a typo
/// would silently keep a default).
fn validate_limits(root: &Map<String, Value>, format: Format, problems: &mut Problems) -> Limits {
    match root.get("limits") {
        None => Limits::default(),
        Some(Value::Object(entries)) => limit_entries(entries, format, problems),
        Some(other) => {
            problems.push(
                "limits",
                format!(
                    "expected {} such as {{ \"cpu_ms\": 50 }}, found {}",
                    article(format.map_word()),
                    kind(other, format)
                ),
            );
            Limits::default()
        }
    }
}

/// The one key of the `limits` section that is not an integer ([`Isolation`]).
const ISOLATION_KEY: &str = "isolation";

/// The keys of a `limits` section, on top of the defaults; every bad key is a problem named
/// `limits.<key>`. The one validator of limits: config files and deployments both use it.
fn limit_entries(entries: &Map<String, Value>, format: Format, problems: &mut Problems) -> Limits {
    let mut limits = Limits::default();
    for (key, value) in entries {
        let field = format!("limits.{key}");
        if key == ISOLATION_KEY {
            let values = Isolation::VALUES;
            match values
                .iter()
                .find(|(name, _)| Some(*name) == value.as_str())
            {
                Some((_, isolation)) => limits.isolation = *isolation,
                None => problems.push(
                    field,
                    format!(
                        "expected \"instance\" (one instance serves many requests; the \
                         default) or \"request\" (a fresh instance per request), found {}",
                        match value {
                            Value::String(s) => format!("{s:?}"),
                            other => kind(other, format).to_owned(),
                        }
                    ),
                ),
            }
            continue;
        }
        let Some(limit) = LIMIT_KEYS.iter().find(|l| l.key == key) else {
            let known: Vec<_> = LIMIT_KEYS
                .iter()
                .map(|l| l.key)
                .chain([ISOLATION_KEY])
                .collect();
            problems.push(
                field,
                format!("unknown limit (allowed keys: {})", known.join(", ")),
            );
            continue;
        };
        match value.as_u64() {
            Some(v) if (limit.min..=limit.max).contains(&v) => (limit.set)(&mut limits, v),
            _ => problems.push(
                field,
                format!(
                    "expected an integer from {} to {}, found {}",
                    limit.min,
                    limit.max,
                    match value {
                        Value::Number(n) => n.to_string(),
                        other => kind(other, format).to_owned(),
                    }
                ),
            ),
        }
    }
    limits
}

/// Why a `limits` section is invalid ([`Limits::from_section`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid limits:{}", ProblemList(.problems))]
pub struct LimitsError {
    /// Every bad key, each naming its field (`limits.cpu_ms`) and what is wrong.
    pub problems: Vec<ConfigProblem>,
}

impl Limits {
    /// Validates a `limits` section (the value of wrangler's `limits` key, as JSON) exactly as
    /// [`ScriptConfig::load`] does: absent keys keep their defaults; an unknown key, a
    /// non-integer or a value out of range is a problem naming its field.
    pub fn from_section(section: &Map<String, Value>) -> Result<Limits, LimitsError> {
        let mut problems = Problems::default();
        let limits = limit_entries(section, Format::Json, &mut problems);
        if problems.0.is_empty() {
            Ok(limits)
        } else {
            Err(LimitsError {
                problems: problems.0,
            })
        }
    }
}

/// A JavaScript-identifier-like name: `[A-Za-z_$][A-Za-z0-9_$]*`.
fn is_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn kind(value: &Value, format: Format) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => match format {
            Format::Json => "an object",
            Format::Toml => "a table",
        },
    }
}

fn article(word: &str) -> String {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {word}"),
        _ => format!("a {word}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a6e";

    /// A temporary folder with a `script.wasm` and the given config file.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join("script.wasm"), b"\0asm").expect("write wasm");
            Self { dir }
        }

        fn load(&self, file: &str, text: &str) -> Result<ScriptConfig, ConfigError> {
            let path = self.dir.path().join(file);
            std::fs::write(&path, text).expect("write config");
            ScriptConfig::load(&path)
        }

        fn problems(&self, file: &str, text: &str) -> Vec<String> {
            match self.load(file, text) {
                Err(ConfigError::Invalid { problems, .. }) => {
                    problems.iter().map(ToString::to_string).collect()
                }
                other => panic!("expected an invalid config, got {other:?}"),
            }
        }
    }

    #[test]
    fn bindings_alone_load_whatever_main_is_and_report_their_problems() {
        let fx = Fixture::new();
        let path = fx.dir.path().join("wrangler.jsonc");
        std::fs::write(
            &path,
            r#"{ "name": "w", "main": "src/index.ts",
                 "vpc_services": [{ "binding": "API", "service": "api" }],
                 "vpc_networks": [{ "binding": "NET", "network_id": "cf1:network" }] }"#,
        )
        .unwrap();
        // `main` does not exist and `service` is not resolved: the bindings still load.
        let bindings = ScriptBindings::load(&path).unwrap();
        assert_eq!(bindings.names().collect::<Vec<_>>(), ["API", "NET"]);
        assert!(ScriptConfig::load(&path).is_err());

        let bad = fx.dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "[[vpc_networks]]\nbinding = \"my-net\"\ntunnel_id = \"x\"\n",
        )
        .unwrap();
        let Err(ConfigError::Invalid { problems, .. }) = ScriptBindings::load(&bad) else {
            panic!("expected an invalid config");
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["vpc_networks[0].binding", "vpc_networks[0].tunnel_id"]
        );
    }

    #[test]
    fn bindings_may_name_their_service_and_names_resolve_through_the_resolver() {
        let fx = Fixture::new();
        let path = fx.dir.path().join("wrangler.jsonc");
        std::fs::write(
            &path,
            r#"{ "name": "w", "main": "script.wasm", "vpc_services": [
                { "binding": "API", "service": "api" },
                { "binding": "DB", "service": "twin" },
                { "binding": "X", "service": "api", "service_id": "x" },
                { "binding": "Y", "service": 7 },
            ] }"#,
        )
        .unwrap();
        let resolve = |name: &str| match name {
            "api" => Ok(SERVICE.parse().unwrap()),
            _ => Err(format!("2 VPC services are named {name:?}")),
        };
        let Err(ConfigError::Invalid { problems, .. }) =
            ScriptConfig::load_resolving(&path, &resolve)
        else {
            panic!("expected problems");
        };
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "vpc_services[1].service: 2 VPC services are named \"twin\"",
                "vpc_services[2].service: give either service_id or service (the service's name), \
                 not both",
                "vpc_services[3].service: expected a string, found a number",
            ]
        );
        std::fs::write(
            &path,
            r#"{ "name": "w", "main": "script.wasm", "vpc_services": [{ "binding": "API", "service": "api" }] }"#,
        )
        .unwrap();
        let config = ScriptConfig::load_resolving(&path, &resolve).unwrap();
        assert_eq!(config.service_of("API"), Some(SERVICE.parse().unwrap()));
        // Without a directory, a name is a clear error.
        let err = ScriptConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("vpc_services[0].service: binding by service name needs the directory"),
            "{err}"
        );
    }

    #[test]
    fn loads_jsonc_with_comments_and_resolves_main_next_to_the_file() {
        let fx = Fixture::new();
        let config = fx
            .load(
                "wrangler.jsonc",
                &format!(
                    r#"{{
                      // wrangler allows comments and trailing commas
                      "name": "my-worker",
                      "main": "script.wasm",
                      "compatibility_date": "2025-11-01",
                      "vpc_services": [
                        {{ "binding": "API", "service_id": "{SERVICE}", "remote": true }},
                      ],
                    }}"#
                ),
            )
            .expect("valid config");
        assert_eq!(
            config,
            ScriptConfig {
                name: "my-worker".into(),
                main: fx.dir.path().join("script.wasm"),
                vpc_services: vec![VpcServiceBinding {
                    binding: "API".into(),
                    service_id: SERVICE.parse().unwrap()
                }],
                vpc_networks: Vec::new(),
                limits: Limits::default(),
            }
        );
        assert_eq!(config.service_of("API"), Some(SERVICE.parse().unwrap()));
        assert_eq!(config.service_of("DB"), None);
    }

    #[test]
    fn loads_toml_and_plain_json() {
        let fx = Fixture::new();
        let toml = fx
            .load(
                "wrangler.toml",
                &format!(
                    "name = \"w\"\nmain = \"script.wasm\"\n\n[[vpc_services]]\nbinding = \"DB\"\n\
                     service_id = \"{SERVICE}\"\n"
                ),
            )
            .expect("valid toml");
        assert_eq!(toml.vpc_services[0].binding, "DB");
        let json = fx
            .load("wrangler.json", r#"{"name": "w", "main": "script.wasm"}"#)
            .expect("valid json");
        assert!(json.vpc_services.is_empty());
    }

    #[test]
    fn reports_every_problem_with_its_field_path() {
        let fx = Fixture::new();
        let problems = fx.problems(
            "wrangler.jsonc",
            &format!(
                r#"{{
                  "name": "my worker",
                  "main": "x.wasm",
                  "vpc_services": [
                    {{ "binding": "API", "service_id": "{SERVICE}" }},
                    {{ "binding": "DB", "service_id": "abc" }},
                    {{ "binding": "API", "service_id": "{SERVICE}" }},
                    {{ "binding": "my-api", "servce_id": "{SERVICE}" }},
                    {{ "binding": 7, "service_id": 7, "remote": "yes" }},
                    "API"
                  ]
                }}"#
            ),
        );
        let resolved = fx.dir.path().join("x.wasm").display().to_string();
        assert_eq!(
            problems,
            vec![
                "name: \"my worker\" is not a valid script name (use letters, digits, - and _, \
                 at most 63 characters)"
                    .to_owned(),
                format!(
                    "main: file \"x.wasm\" does not exist (resolved to {resolved:?}; build the \
                     script first)"
                ),
                "vpc_services[1].service_id: \"abc\" is not a UUID (use the service_id printed \
                 by `wvpc service create`)"
                    .to_owned(),
                "vpc_services[2].binding: \"API\" is already declared by vpc_services[0]"
                    .to_owned(),
                "vpc_services[3].servce_id: unknown key (allowed keys: binding, service_id, service, \
                 remote)"
                    .to_owned(),
                "vpc_services[3].binding: \"my-api\" is not a valid binding name (use a \
                 JavaScript identifier: letters, digits, _ or $, not starting with a digit, e.g. \
                 API)"
                    .to_owned(),
                "vpc_services[3].service_id: missing (use the service_id printed by `wvpc \
                 service create`)"
                    .to_owned(),
                "vpc_services[4].remote: expected a boolean, found a string".to_owned(),
                "vpc_services[4].binding: expected a string, found a number".to_owned(),
                "vpc_services[4].service_id: expected a string, found a number".to_owned(),
                "vpc_services[5]: expected an object with \"binding\" and \"service_id\", found \
                 a string"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn network_bindings_name_a_tunnel_or_a_network() {
        use wvpc_schemas::NetworkTarget;
        const TUNNEL: &str = "6f1c1c4e-8a0b-4b7e-9d5a-2f6f0e0c1a11";
        let fx = Fixture::new();
        let config = fx
            .load(
                "wrangler.jsonc",
                &format!(
                    r#"{{ "name": "w", "main": "script.wasm",
                      "vpc_services": [{{ "binding": "API", "service_id": "{SERVICE}" }}],
                      "vpc_networks": [
                        {{ "binding": "OFFICE", "tunnel_id": "{TUNNEL}", "remote": true }},
                        {{ "binding": "ALL", "network_id": "cf1:network" }},
                        {{ "binding": "LAB", "network_id": "cf1:vnet:{TUNNEL}" }}
                      ] }}"#
                ),
            )
            .unwrap();
        let tunnel = Uuid::parse_str(TUNNEL).unwrap();
        assert_eq!(
            config.vpc_networks,
            [
                VpcNetworkBinding {
                    binding: "OFFICE".into(),
                    network: NetworkTarget::Tunnel(tunnel),
                },
                VpcNetworkBinding {
                    binding: "ALL".into(),
                    network: NetworkTarget::AllNetworks,
                },
                VpcNetworkBinding {
                    binding: "LAB".into(),
                    network: NetworkTarget::VirtualNetwork(tunnel),
                },
            ]
        );
        let toml = fx
            .load(
                "wrangler.toml",
                "name = \"w\"\nmain = \"script.wasm\"\n\n[[vpc_networks]]\nbinding = \"NET\"\n\
                 network_id = \"cf1:network\"\n",
            )
            .unwrap();
        assert_eq!(toml.vpc_networks[0].network, NetworkTarget::AllNetworks);
    }

    #[test]
    fn network_binding_mistakes_are_reported_with_their_paths() {
        let fx = Fixture::new();
        let problems = fx.problems(
            "wrangler.jsonc",
            &format!(
                r#"{{
                  "name": "w",
                  "main": "script.wasm",
                  "vpc_services": [{{ "binding": "API", "service_id": "{SERVICE}" }}],
                  "vpc_networks": [
                    {{ "binding": "API", "network_id": "cf1:network" }},
                    {{ "binding": "NET", "network_id": "cf1:vnet:lab" }},
                    {{ "binding": "BOTH", "tunnel_id": "{SERVICE}", "network_id": "cf1:network" }},
                    {{ "binding": "NONE" }},
                    {{ "binding": "T", "tunnel_id": "office", "remote": 1, "netwrk_id": "x" }},
                    {{ "binding": "ODD", "network_id": "all" }},
                    {{ "binding": "NET", "network_id": 5 }},
                    "NET"
                  ]
                }}"#
            ),
        );
        assert_eq!(
            problems,
            vec![
                "vpc_networks[0].binding: \"API\" is already declared by vpc_services[0]"
                    .to_owned(),
                "vpc_networks[1].network_id: \"cf1:vnet:lab\" does not end in a virtual network \
                 id (a UUID, as `wvpc vnet list` prints)"
                    .to_owned(),
                "vpc_networks[2]: give either tunnel_id or network_id, not both (tunnel_id \
                 reaches one tunnel; network_id a virtual network, whose routes pick the tunnel)"
                    .to_owned(),
                format!("vpc_networks[3]: missing tunnel_id or network_id; {NETWORK_HINT}"),
                "vpc_networks[4].netwrk_id: unknown key (allowed keys: binding, tunnel_id, \
                 network_id, remote)"
                    .to_owned(),
                "vpc_networks[4].remote: expected a boolean, found a number".to_owned(),
                "vpc_networks[4].tunnel_id: \"office\" is not a tunnel id (a UUID, as `wvpc \
                 tunnel list` prints)"
                    .to_owned(),
                "vpc_networks[5].network_id: \"all\" is not a network id (use \"cf1:network\" \
                 or \"cf1:vnet:<virtual network id>\")"
                    .to_owned(),
                "vpc_networks[6].binding: \"NET\" is already declared by vpc_networks[1]"
                    .to_owned(),
                "vpc_networks[6].network_id: expected a string, found a number".to_owned(),
                "vpc_networks[7]: expected an object with \"binding\" and \"tunnel_id\" or \
                 \"network_id\", found a string"
                    .to_owned(),
            ]
        );
        assert_eq!(
            fx.problems(
                "wrangler.toml",
                "name = \"w\"\nmain = \"script.wasm\"\nvpc_networks = \"cf1:network\"\n"
            ),
            vec![
                "vpc_networks: expected an array of {binding, tunnel_id | network_id} tables, \
                 found a string"
            ]
        );
    }

    #[test]
    fn missing_and_mistyped_top_level_fields() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems("wrangler.json", r#"{"vpc_services": {}}"#),
            vec![
                "name: missing (the script's name, e.g. my-worker)",
                "main: missing (the path of the script's .wasm component, or of its JavaScript / \
                 TypeScript entry (src/index.js), relative to this file)",
                "vpc_services: expected an array of {binding, service_id} objects, found an \
                 object",
            ]
        );
        assert_eq!(
            fx.problems(
                "wrangler.toml",
                "name = 1\nmain = \".\"\nvpc_services = 3\n"
            ),
            vec![
                "name: expected a string, found a number",
                "main: \".\" is not a file (point it at the .wasm component or the JavaScript entry)",
                "vpc_services: expected an array of {binding, service_id} tables, found a number",
            ]
        );
        assert_eq!(
            fx.problems("wrangler.json", "[]"),
            vec!["(top level): expected an object, found an array"]
        );
    }

    #[test]
    fn the_whole_error_lists_the_file_and_each_problem() {
        let fx = Fixture::new();
        let err = fx
            .load(
                "wrangler.json",
                r#"{"name": "w", "main": "script.wasm", "vpc_services": [1]}"#,
            )
            .unwrap_err();
        let path = fx.dir.path().join("wrangler.json");
        assert_eq!(
            err.to_string(),
            format!(
                "config {} is invalid:\n  - vpc_services[0]: expected an object with \"binding\" \
                 and \"service_id\", found a number",
                path.display()
            )
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let fx = Fixture::new();
        let err = fx
            .load(
                "wrangler.jsonc",
                "{\n  \"name\": \"w\"\n  \"main\" \"x\"\n}",
            )
            .unwrap_err();
        let ConfigError::Syntax {
            format,
            line,
            column,
            ..
        } = &err
        else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!((*format, *line, *column), ("JSON", 3, 10));

        let err = fx
            .load("wrangler.toml", "name = \"w\"\nmain = \n")
            .unwrap_err();
        let ConfigError::Syntax {
            format,
            line,
            column,
            message,
            ..
        } = &err
        else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!(
            (*format, *line),
            ("TOML", 2),
            "{message} at column {column}"
        );
        assert!(
            err.to_string().contains("TOML syntax error on line 2"),
            "{err}"
        );
    }

    #[test]
    fn limits_are_read_and_checked() {
        let fx = Fixture::new();
        let config = fx
            .load(
                "wrangler.toml",
                "name = \"w\"\nmain = \"script.wasm\"\n[limits]\ncpu_ms = 50\nsubrequests = 1000\n",
            )
            .expect("valid limits");
        assert_eq!(config.limits.cpu, std::time::Duration::from_millis(50));
        assert_eq!(config.limits.subrequests, 1000);
        assert_eq!(config.limits.connections, Limits::default().connections);

        assert_eq!(
            fx.problems(
                "wrangler.json",
                r#"{"name": "w", "main": "script.wasm",
                    "limits": {"cpu_ms": 0, "memory_mb": 512, "subrequests": "many", "cpu": 1}}"#
            ),
            vec![
                "limits.cpu: unknown limit (allowed keys: cpu_ms, memory_mb, wall_time_ms, \
                 subrequests, connections, queued_connections, url_bytes, header_bytes, \
                 isolation)",
                "limits.cpu_ms: expected an integer from 1 to 300000, found 0",
                "limits.memory_mb: expected an integer from 1 to 128, found 512",
                "limits.subrequests: expected an integer from 1 to 1000, found a string",
            ]
        );
        assert_eq!(
            fx.problems(
                "wrangler.json",
                r#"{"name": "w", "main": "script.wasm", "limits": 5}"#
            ),
            vec!["limits: expected an object such as { \"cpu_ms\": 50 }, found a number"]
        );
    }

    #[test]
    fn a_limits_section_alone_is_checked_like_the_file() {
        let section = |json: serde_json::Value| json.as_object().cloned().unwrap();
        let limits = Limits::from_section(&section(serde_json::json!({ "cpu_ms": 50 })))
            .expect("valid limits");
        assert_eq!(limits.cpu, std::time::Duration::from_millis(50));
        assert_eq!(limits.subrequests, Limits::default().subrequests);
        assert_eq!(
            Limits::from_section(&Map::new()).expect("empty"),
            Limits::default()
        );
        let err = Limits::from_section(&section(serde_json::json!({
            "memory_mb": 512, "subrequests": {}, "cpu": 1
        })))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid limits:\n  - limits.cpu: unknown limit (allowed keys: cpu_ms, memory_mb, \
             wall_time_ms, subrequests, connections, queued_connections, url_bytes, \
             header_bytes, isolation)\n  - limits.memory_mb: expected an integer from 1 to 128, found \
             512\n  - limits.subrequests: expected an integer from 1 to 1000, found an object"
        );
    }

    #[test]
    fn isolation_is_instance_by_default_request_on_demand_and_checked() {
        use crate::limits::Isolation;
        let fx = Fixture::new();
        let isolation = |text: &str| fx.load("wrangler.toml", text).map(|c| c.limits.isolation);
        assert_eq!(
            isolation("name = \"w\"\nmain = \"script.wasm\"\n").expect("no limits"),
            Isolation::Instance
        );
        assert_eq!(
            isolation("name = \"w\"\nmain = \"script.wasm\"\n[limits]\nisolation = \"request\"\n")
                .expect("request"),
            Isolation::Request
        );
        assert_eq!(
            fx.problems(
                "wrangler.json",
                r#"{"name": "w", "main": "script.wasm", "limits": {"isolation": "isolate"}}"#
            ),
            vec![
                "limits.isolation: expected \"instance\" (one instance serves many requests; \
                 the default) or \"request\" (a fresh instance per request), found \"isolate\""
            ]
        );
        let err = Limits::from_section(serde_json::json!({ "isolation": 1 }).as_object().unwrap())
            .unwrap_err();
        assert!(err.to_string().ends_with("found a number"), "{err}");
    }

    #[test]
    fn unreadable_and_unsupported_files() {
        let fx = Fixture::new();
        let missing = fx.dir.path().join("nope.jsonc");
        assert!(matches!(
            ScriptConfig::load(&missing),
            Err(ConfigError::Read { .. })
        ));
        let yaml = fx.dir.path().join("wrangler.yaml");
        assert_eq!(
            ScriptConfig::load(&yaml).unwrap_err().to_string(),
            format!(
                "config {}: unsupported file type (use a wrangler.jsonc, wrangler.json or \
                 wrangler.toml)",
                yaml.display()
            )
        );
    }
}
