//! The daemon's configuration: a TOML file, flags on top, reloaded on SIGHUP.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::LoadRequest;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The config file, as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    worker_socket: Option<PathBuf>,
    worker_handshake_timeout_ms: Option<u64>,
    device_query_timeout_ms: Option<u64>,
    worker_start_timeout_ms: Option<u64>,
    worker_heartbeat_timeout_ms: Option<u64>,
    allow_group: Option<GroupSpec>,
    #[serde(default)]
    model_dirs: Vec<PathBuf>,
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    request_timeout_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    log_format: Option<LogFormat>,
    http_listen: Option<SocketAddr>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    queue_requests: Option<usize>,
    queue_prompt_tokens: Option<usize>,
    #[serde(default)]
    models: Vec<LoadRequest>,
}

/// A group by name or by gid.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum GroupSpec {
    Id(u32),
    Name(String),
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The control socket path.
    pub socket: PathBuf,
    /// Where workers started by a process manager connect (`modelhost-worker --connect`).
    pub worker_socket: PathBuf,
    /// How long a connecting worker has to complete its handshake and say Hello.
    pub worker_handshake_timeout: Duration,
    /// How long a CUDA device query (`modelhost-worker --inventory`) may take before it is
    /// killed and the load refused.
    pub device_query_timeout: Duration,
    /// How long a spawned worker has to say Hello before it is killed and restarted.
    pub worker_start_timeout: Duration,
    /// How long a worker may be silent after its Hello before it is killed and restarted.
    pub worker_heartbeat_timeout: Duration,
    /// A group whose members may use the control socket besides the daemon's own user.
    pub allow_gid: Option<u32>,
    /// When not empty, models may only be loaded from inside these directories.
    pub model_dirs: Vec<PathBuf>,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    /// How long a client has to send its request headers.
    pub request_timeout: Duration,
    /// How long shutdown waits for open connections before closing them.
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// Where to serve the generation API over TCP (OpenAI clients cannot reach a unix
    /// socket); none by default. Loopback unless configured otherwise.
    pub http_listen: Option<SocketAddr>,
    /// The bearer key the TCP listener asks for (from `api_key`, or the first line of
    /// `api_key_file`); none asks for none.
    pub api_key: Option<String>,
    /// Requests that may wait per model when every slot is busy; more get 429.
    pub queue_requests: usize,
    /// Prompt tokens that may wait per model; more get 429.
    pub queue_prompt_tokens: usize,
    /// Models to load at start (and on SIGHUP, those not yet loaded).
    pub models: Vec<LoadRequest>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config: allow_group {0:?} is not a group on this system")]
    UnknownGroup(String),
    #[error("config: model_dirs entry {0} must be an absolute path")]
    RelativeModelDir(PathBuf),
    #[error("config: api_key_file {path}: {source}")]
    ApiKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: give api_key or api_key_file, not both")]
    TwoApiKeys,
    #[error("config: the API key is empty")]
    EmptyApiKey,
}

/// Values given on the command line; they override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub http_listen: Option<SocketAddr>,
}

impl Config {
    /// Reads `path` (if given) and applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
        };
        let allow_gid = match &file.allow_group {
            None => None,
            Some(GroupSpec::Id(gid)) => Some(*gid),
            Some(GroupSpec::Name(group)) => Some(resolve_group(group)?),
        };
        for dir in &file.model_dirs {
            if !dir.is_absolute() {
                return Err(ConfigError::RelativeModelDir(dir.clone()));
            }
        }
        let api_key = match (file.api_key, &file.api_key_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoApiKeys),
            (Some(key), None) => Some(key),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::ApiKeyFile {
                        path: path.clone(),
                        source,
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if api_key.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::EmptyApiKey);
        }
        let socket = overrides
            .socket
            .clone()
            .or(file.socket)
            .unwrap_or_else(default_socket_path);
        Ok(Config {
            worker_socket: file
                .worker_socket
                .unwrap_or_else(|| socket.with_file_name("workers.sock")),
            worker_handshake_timeout: Duration::from_millis(
                file.worker_handshake_timeout_ms.unwrap_or(5_000),
            ),
            device_query_timeout: Duration::from_millis(
                file.device_query_timeout_ms
                    .unwrap_or(DEFAULT_DEVICE_QUERY_TIMEOUT.as_millis() as u64),
            ),
            worker_start_timeout: Duration::from_millis(
                file.worker_start_timeout_ms.unwrap_or(20_000),
            ),
            worker_heartbeat_timeout: Duration::from_millis(
                file.worker_heartbeat_timeout_ms.unwrap_or(3_000).max(300),
            ),
            socket,
            allow_gid,
            model_dirs: file.model_dirs.iter().map(|d| normalize(d)).collect(),
            max_body_bytes: file.max_body_bytes.unwrap_or(1 << 20),
            max_connections: file.max_connections.unwrap_or(4096),
            request_timeout: Duration::from_millis(file.request_timeout_ms.unwrap_or(10_000)),
            shutdown_timeout: Duration::from_millis(file.shutdown_timeout_ms.unwrap_or(5_000)),
            log_format: overrides.log_format.or(file.log_format).unwrap_or_default(),
            http_listen: overrides.http_listen.or(file.http_listen),
            api_key,
            queue_requests: file.queue_requests.unwrap_or(64),
            queue_prompt_tokens: file.queue_prompt_tokens.unwrap_or(1 << 20),
            models: file.models,
        })
    }
}

fn resolve_group(group: &str) -> Result<u32, ConfigError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(ConfigError::UnknownGroup(group.to_owned())),
    }
}

/// How long a device query (`modelhost-worker --inventory`) may take unless configured.
pub const DEFAULT_DEVICE_QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// The worker binary: `$MODELHOST_WORKER`, else `modelhost-worker` beside this executable.
pub fn worker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MODELHOST_WORKER") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .map(|exe| exe.with_file_name("modelhost-worker"))
        .unwrap_or_else(|_| PathBuf::from("modelhost-worker"))
}

/// The control socket path: `$MODELHOST_SOCKET`; else `/run/modelhost/control.sock` for root;
/// else `$XDG_RUNTIME_DIR/modelhost/control.sock`; else `/tmp/modelhost-$UID/control.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os("MODELHOST_SOCKET") {
        return PathBuf::from(path);
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/modelhost/control.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("modelhost/control.sock"),
        _ => PathBuf::from(format!("/tmp/modelhost-{uid}/control.sock")),
    }
}

/// Resolves `.` and `..` without touching the filesystem, so a path can be checked against the
/// allow-list before anything reveals whether it exists.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_dots_lexically() {
        assert_eq!(
            normalize(Path::new("/srv/models/../etc/./passwd")),
            Path::new("/srv/etc/passwd")
        );
        assert_eq!(normalize(Path::new("/../..")), Path::new("/"));
    }

    /// The shipped example must stay loadable, with its commented options switched on too.
    #[test]
    fn the_example_config_parses_with_every_option_enabled() {
        let example = include_str!("../../deploy/systemd/config.toml");
        assert!(toml::from_str::<FileConfig>(example).is_ok());
        let enabled: String = example
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| rest.contains(" = ") || rest.starts_with("[["))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let file: FileConfig =
            toml::from_str(&enabled).unwrap_or_else(|e| panic!("{e}\n{enabled}"));
        assert!(matches!(file.allow_group, Some(GroupSpec::Name(ref g)) if g == "modelhost"));
        assert_eq!(file.models.len(), 1);
        assert_eq!(file.models[0].name.as_deref(), Some("gemma"));
        assert_eq!(file.max_connections, Some(4096));
    }

    #[test]
    fn the_api_key_comes_from_one_place_and_is_not_empty() {
        let dir = std::env::temp_dir().join(format!("modelhost-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("key");
        std::fs::write(&key_file, "  sk-from-file  \nignored\n").unwrap();
        let load = |text: String| {
            let path = dir.join("c.toml");
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), &Overrides::default())
        };
        let c = load(format!(
            "api_key_file = {:?}\nhttp_listen = \"127.0.0.1:8080\"\n",
            key_file
        ))
        .unwrap();
        assert_eq!(c.api_key.as_deref(), Some("sk-from-file"));
        assert_eq!(c.http_listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!((c.queue_requests, c.queue_prompt_tokens), (64, 1 << 20));
        assert!(matches!(
            load(format!("api_key = \"a\"\napi_key_file = {key_file:?}\n")),
            Err(ConfigError::TwoApiKeys)
        ));
        assert!(matches!(
            load("api_key = \" \"\n".into()).map(|c| c.api_key),
            Ok(Some(k)) if k == " "
        ));
        std::fs::write(&key_file, "\n").unwrap();
        assert!(matches!(
            load(format!("api_key_file = {key_file:?}\n")),
            Err(ConfigError::EmptyApiKey)
        ));
        assert!(matches!(
            load("api_key_file = \"/nonexistent/key\"\n".into()),
            Err(ConfigError::ApiKeyFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_files_are_strict_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("modelhost-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "socket = \"/x/s.sock\"\nmodel_dirs = [\"/srv/models\"]\nlog_format = \"json\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(c.socket, Path::new("/x/s.sock"));
        assert_eq!(c.log_format, LogFormat::Json);
        let c = Config::load(
            Some(&path),
            &Overrides {
                socket: Some("/y.sock".into()),
                log_format: None,
                http_listen: None,
            },
        )
        .unwrap();
        assert_eq!(c.socket, Path::new("/y.sock"));

        std::fs::write(&path, "sockett = 1\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("sockett"), "{err}");
        std::fs::write(&path, "model_dirs = [\"models\"]\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path), &Overrides::default()),
            Err(ConfigError::RelativeModelDir(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
