//! Reading a config file: format by extension, syntax, environment overrides,
//! deserialization with the field path of every error, validation.

use std::io::Read;
use std::path::Path;

use serde_path_to_error::Segment;
use serde_yaml_ng::{Mapping, Value};

use super::{Config, ConfigFileError};

/// The largest config file read, 4 MiB: a file larger than that is refused rather
/// than read into memory.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A config file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
}

impl Format {
    /// The format a file name's extension names (case-insensitive), if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum EnvSource {
    Process,
    Given(Vec<(String, String)>),
    Off,
}

/// Loads config files: picks the format by extension, applies environment
/// overrides, validates. [`Config::from_file`] is `ConfigLoader::new().load(path)`.
///
/// Overrides come from the process environment unless [`env_vars`](Self::env_vars)
/// gives them (for tests, or another source of settings).
///
/// ```
/// use palisade::config::{ConfigLoader, Format};
///
/// let config = ConfigLoader::new()
///     .env_vars([("PALISADE__DOWNSTREAMS__CUSTOMER__BREAKER__FAILURE_RATE_THRESHOLD", "0.3")])
///     .load_str("[downstreams.customer.breaker]\nfailure_rate_threshold = 0.5\n", Format::Toml, "palisade.toml")
///     .unwrap();
/// assert_eq!(config.downstreams["customer"].breaker.as_ref().unwrap().failure_rate_threshold, 0.3);
/// ```
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    prefix: String,
    env: EnvSource,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

/// One environment override: the variable, the lower-case path it names and its
/// value.
struct Override {
    var: String,
    path: Vec<String>,
    value: Value,
}

impl ConfigLoader {
    /// A loader reading overrides from the process environment, prefix `PALISADE`.
    pub fn new() -> Self {
        Self {
            prefix: "PALISADE".to_owned(),
            env: EnvSource::Process,
        }
    }

    /// Reads overrides from variables starting with `<prefix>__` instead.
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Reads overrides from these `(name, value)` pairs instead of the process
    /// environment; names without the prefix are ignored.
    pub fn env_vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = EnvSource::Given(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Applies no environment overrides.
    pub fn without_env(mut self) -> Self {
        self.env = EnvSource::Off;
        self
    }

    /// Reads, overrides and validates the file at `path`; the format comes from
    /// its extension (`.toml`, `.yaml`, `.yml`).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Config, ConfigFileError> {
        let path = path.as_ref();
        let format = Format::from_path(path).ok_or_else(|| ConfigFileError::UnknownFormat {
            path: path.to_owned(),
        })?;
        let text = read_file(path)?;
        self.load_str(&text, format, path)
    }

    /// Overrides and validates `text`; errors name `origin` as the file.
    pub fn load_str(
        &self,
        text: &str,
        format: Format,
        origin: impl AsRef<Path>,
    ) -> Result<Config, ConfigFileError> {
        let origin = origin.as_ref();
        let overrides = self.overrides(origin)?;
        let config = if overrides.is_empty() {
            from_text(text, format, origin)?
        } else {
            let mut tree = tree(text, format, origin)?;
            for o in &overrides {
                apply(&mut tree, o).map_err(|problem| ConfigFileError::Env {
                    path: origin.to_owned(),
                    var: o.var.clone(),
                    problem,
                })?;
            }
            from_tree(tree, origin).map_err(|e| blame_env(e, &overrides))?
        };
        config.validate().map_err(|e| {
            blame_env(
                ConfigFileError::Invalid {
                    path: origin.to_owned(),
                    field: e.field().to_owned(),
                    problem: e.problem().to_owned(),
                    location: None,
                    env_var: None,
                },
                &overrides,
            )
        })?;
        Ok(config)
    }

    fn overrides(&self, origin: &Path) -> Result<Vec<Override>, ConfigFileError> {
        let head = format!("{}__", self.prefix);
        let vars: Vec<(String, String)> = match &self.env {
            EnvSource::Off => return Ok(Vec::new()),
            EnvSource::Given(vars) => vars
                .iter()
                .filter(|(k, _)| k.starts_with(&head))
                .cloned()
                .collect(),
            EnvSource::Process => {
                let mut vars = Vec::new();
                for (k, v) in std::env::vars_os() {
                    let Some(k) = k.to_str().filter(|k| k.starts_with(&head)) else {
                        continue;
                    };
                    let v = v.into_string().map_err(|_| ConfigFileError::Env {
                        path: origin.to_owned(),
                        var: k.to_owned(),
                        problem: "the value is not UTF-8".to_owned(),
                    })?;
                    vars.push((k.to_owned(), v));
                }
                vars
            }
        };
        let mut out = Vec::with_capacity(vars.len());
        for (var, raw) in vars {
            let path: Vec<String> = var[head.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigFileError::Env {
                    path: origin.to_owned(),
                    var,
                    problem:
                        "the name has an empty path segment (two `__` in a row, or one at the end)"
                            .to_owned(),
                });
            }
            out.push(Override {
                var,
                path,
                value: env_value(&raw),
            });
        }
        // The same order every time, whatever the environment's.
        out.sort_by(|a, b| a.var.cmp(&b.var));
        Ok(out)
    }
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigFileError> {
    let file = std::fs::File::open(path).map_err(|e| ConfigFileError::read(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigFileError::read(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigFileError::read(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file is larger than {MAX_FILE_BYTES} bytes"),
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        ConfigFileError::read(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")),
        )
    })
}

/// An override's value, read as a YAML value (a number, `true`, `[a, b]`,
/// `{ k: v }`, empty or `~` for "unset"), or as a plain string when it is not one.
fn env_value(raw: &str) -> Value {
    if check_flow_depth(raw, Path::new("")).is_err() {
        return Value::String(raw.to_owned());
    }
    match serde_yaml_ng::from_str::<Value>(raw) {
        Ok(v) => v,
        Err(_) => Value::String(raw.to_owned()),
    }
}

/// How a key is compared with an override's path segment: lower case, `-` as `_`
/// (environment variable names have neither upper-case nor dashes to spare).
fn normalized(key: &str) -> String {
    key.to_ascii_lowercase().replace('-', "_")
}

fn apply(root: &mut Value, o: &Override) -> Result<(), String> {
    let mut node = root;
    for (i, segment) in o.path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            return Err(format!(
                "`{}` is not a table, so it has no `{segment}`",
                o.path[..i].join(".")
            ));
        };
        let key = map
            .keys()
            .find(|k| k.as_str().is_some_and(|k| normalized(k) == *segment))
            .cloned()
            .unwrap_or_else(|| Value::String(segment.clone()));
        if i + 1 == o.path.len() {
            map.insert(key, o.value.clone());
            return Ok(());
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    Ok(())
}

/// Points an error at the override that set the value, if one did.
fn blame_env(mut e: ConfigFileError, overrides: &[Override]) -> ConfigFileError {
    if let ConfigFileError::Invalid { field, env_var, .. } = &mut e {
        let lowered = normalized(field);
        // The last override wins when two name the same place; blame that one.
        if let Some(o) = overrides.iter().rev().find(|o| {
            let p = o.path.join(".");
            lowered == p
                || lowered.starts_with(&format!("{p}."))
                || lowered.starts_with(&format!("{p}["))
        }) {
            *env_var = Some(o.var.clone());
        }
    }
    e
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, tail)| tail)
        .chars()
        .count()
        + 1;
    Some((line, column))
}

/// The field path of a deserialization error, `a.b[0].c`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// The field path, with an unknown field's own name added where the path stops at
/// the table holding it (inside tagged enums such as `window = { kind = … }`).
fn with_unknown_field(mut field: String, problem: &str) -> String {
    if let Some(rest) = problem.strip_prefix("unknown field `")
        && let Some((name, _)) = rest.split_once('`')
        && !(field == name || field.ends_with(&format!(".{name}")))
    {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(name);
    }
    field
}

fn invalid(
    origin: &Path,
    field: String,
    problem: String,
    location: Option<(usize, usize)>,
) -> ConfigFileError {
    let field = with_unknown_field(field, &problem);
    ConfigFileError::Invalid {
        path: origin.to_owned(),
        field,
        problem,
        location,
        env_var: None,
    }
}

/// A YAML error's message without the location and path it prints itself.
fn yaml_message(e: &serde_yaml_ng::Error, field: &str) -> String {
    let mut message = e.to_string();
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        message = message.replacen(&suffix, "", 1);
    }
    if let Some((head, tail)) = message.split_once(": ")
        && !head.is_empty()
        && (field == head
            || field.starts_with(&format!("{head}."))
            || field.starts_with(&format!("{head}[")))
    {
        message = tail.to_owned();
    }
    message
}

/// The deepest nesting of YAML flow collections (`[…]`, `{…}`) accepted. A config
/// needs a handful; the YAML parser's time grows with the square of this depth, so
/// a document nested thousands deep is refused before it is parsed.
const MAX_FLOW_DEPTH: usize = 64;

/// Refuses YAML whose flow collections nest deeper than [`MAX_FLOW_DEPTH`], in one
/// pass over the text. Brackets in quoted strings, comments and plain words
/// (`a[b`) do not count.
fn check_flow_depth(text: &str, origin: &Path) -> Result<(), ConfigFileError> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    // The last character that was not a space, on this line (None at its start).
    let mut last: Option<char> = None;
    // The character just before, on this line.
    let mut prev: Option<char> = None;
    let (mut line, mut column) = (1usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        column += 1;
        if c == '\n' {
            (line, column, last, prev) = (line + 1, 0, None, None);
            continue;
        }
        if let Some(q) = quote {
            if q == '"' && c == '\\' {
                chars.next();
                column += 1;
            } else if c == q {
                if q == '\'' && chars.peek() == Some(&'\'') {
                    chars.next();
                    column += 1;
                } else {
                    quote = None;
                }
            }
            (last, prev) = (Some(c), Some(c));
            continue;
        }
        let opens_value =
            depth > 0 || matches!(last, None | Some(':' | ',' | '-' | '?' | '[' | '{'));
        match c {
            '#' if prev.is_none_or(char::is_whitespace) => {
                // A comment: skip to the end of the line.
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
                continue;
            }
            '"' | '\'' if opens_value || last.is_none() => quote = Some(c),
            '[' | '{' if opens_value => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(ConfigFileError::Syntax {
                        path: origin.to_owned(),
                        line,
                        column,
                        message: format!("collections nested deeper than {MAX_FLOW_DEPTH} levels"),
                    });
                }
            }
            ']' | '}' if depth > 0 => depth -= 1,
            _ => {}
        }
        if !c.is_whitespace() {
            last = Some(c);
        }
        prev = Some(c);
    }
    Ok(())
}

fn yaml_location(e: &serde_yaml_ng::Error) -> Option<(usize, usize)> {
    e.location().map(|l| (l.line(), l.column()))
}

fn yaml_syntax(e: &serde_yaml_ng::Error, origin: &Path) -> ConfigFileError {
    let (line, column) = yaml_location(e).unwrap_or((1, 1));
    ConfigFileError::Syntax {
        path: origin.to_owned(),
        line,
        column,
        message: yaml_message(e, ""),
    }
}

fn toml_syntax(e: &toml::de::Error, text: &str, origin: &Path) -> ConfigFileError {
    let (line, column) = e
        .span()
        .and_then(|s| line_column(text, s.start))
        .unwrap_or((1, 1));
    ConfigFileError::Syntax {
        path: origin.to_owned(),
        line,
        column,
        message: e.message().to_owned(),
    }
}

/// Deserializes straight from the text, so errors carry line and column.
fn from_text(text: &str, format: Format, origin: &Path) -> Result<Config, ConfigFileError> {
    match format {
        Format::Toml => {
            let de = toml::Deserializer::parse(text).map_err(|e| toml_syntax(&e, text, origin))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = field_path(e.path());
                let inner = e.inner();
                let location = inner.span().and_then(|s| line_column(text, s.start));
                invalid(origin, field, inner.message().to_owned(), location)
            })
        }
        Format::Yaml => {
            check_flow_depth(text, origin)?;
            // Syntax first, so a document that is not YAML is not reported as a
            // wrong setting.
            let tree: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_syntax(&e, origin))?;
            if tree.is_null() {
                // An empty document: every section left out.
                return Ok(Config::default());
            }
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = field_path(e.path());
                let problem = yaml_message(e.inner(), &field);
                invalid(origin, field, problem, yaml_location(e.inner()))
            })
        }
    }
}

/// The document as a tree, for overrides to change.
fn tree(text: &str, format: Format, origin: &Path) -> Result<Value, ConfigFileError> {
    match format {
        Format::Toml => toml::from_str::<Value>(text).map_err(|e| toml_syntax(&e, text, origin)),
        Format::Yaml => {
            check_flow_depth(text, origin)?;
            serde_yaml_ng::from_str::<Value>(text).map_err(|e| yaml_syntax(&e, origin))
        }
    }
}

fn from_tree(tree: Value, origin: &Path) -> Result<Config, ConfigFileError> {
    if tree.is_null() {
        return Ok(Config::default());
    }
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let field = field_path(e.path());
        let problem = yaml_message(e.inner(), &field);
        invalid(origin, field, problem, None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), Some((1, 1)));
        assert_eq!(line_column(text, 6), Some((2, 1)));
        assert_eq!(line_column(text, 9), Some((2, 3)));
        assert_eq!(line_column(text, 8), None, "inside a character");
    }

    #[test]
    fn env_values_are_yaml_or_strings() {
        assert_eq!(env_value("0.3"), Value::from(0.3));
        assert_eq!(env_value("7"), Value::from(7));
        assert_eq!(env_value("true"), Value::from(true));
        assert_eq!(env_value("30s"), Value::from("30s"));
        assert_eq!(env_value(""), Value::Null);
        assert_eq!(env_value("[a:1, b:2]").as_sequence().map(Vec::len), Some(2));
        assert_eq!(env_value("{ unclosed"), Value::from("{ unclosed"));
    }

    #[test]
    fn flow_depth_counts_only_real_collections() {
        let ok = |t: &str| check_flow_depth(t, Path::new("t")).is_ok();
        let deep = |n: usize| format!("a: {}", "[".repeat(n));
        assert!(ok(&deep(64)));
        assert!(!ok(&deep(65)));
        let e = check_flow_depth(&format!("x: 1\n{}", deep(65)), Path::new("t")).unwrap_err();
        assert_eq!(e.location(), Some((2, 68)));
        // Brackets in words, quotes and comments are not collections.
        let words = "a[b ".repeat(100);
        assert!(ok(&format!("k: {words}")));
        assert!(ok(&format!("k: '{}'", "[".repeat(100))));
        assert!(ok(&format!("k: \"{}\"", "[\\\"".repeat(100))));
        assert!(ok(&format!("k: 1 # {}", "[".repeat(100))));
        // Closed collections do not add up.
        assert!(ok(&format!("k: [{}]", "[1], ".repeat(1000))));
    }

    #[test]
    fn unknown_fields_inside_tagged_enums_get_their_name() {
        assert_eq!(
            with_unknown_field("a.window".into(), "unknown field `extra`, expected `size`"),
            "a.window.extra"
        );
        assert_eq!(
            with_unknown_field("a.extra".into(), "unknown field `extra`, expected `size`"),
            "a.extra"
        );
        assert_eq!(with_unknown_field("a.b".into(), "invalid type"), "a.b");
    }
}
