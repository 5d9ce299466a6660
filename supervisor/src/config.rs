//! The node's settings, `$ELASTOS_HOME/config.toml`. Absent means defaults; an unknown key or
//! format is an error, so a typo never silently weakens a setting.

use serde::{Deserialize, Serialize};

use crate::home::Home;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `elastos_schema::versions::STATE`.
    #[serde(default = "format_default")]
    pub format: u32,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub confinement: ConfinementConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// Who decides token requests: the node's shell capsule (the default: the policy out of the
/// trusted base, `policies/default.toml` or `$ELASTOS_HOME/policies/default.toml`), or, only when
/// the node says so, the built-in development policy (a manifest's `requests` is the grant).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `shell` (the default) or `development`.
    #[serde(default = "decider_default")]
    pub decider: Decider,
    /// The shell capsule's name; it must be signed by this node's key or a first-party
    /// publisher, and may not hold `host://net`.
    #[serde(default = "shell_default")]
    pub shell: String,
    /// The shell's publisher, when the node names one (a DID): then only that publisher's
    /// package under the shell's name decides for the node. Unset: this node or any
    /// first-party publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_publisher: Option<String>,
    /// How long a request waits for a shell that is not running (starting, restarting) before it
    /// is denied `policy unavailable`.
    #[serde(default = "shell_wait_default", with = "humantime_serde_secs")]
    pub shell_wait: std::time::Duration,
    /// What a `prompt` answer becomes: `prompt`, the person is asked (`elastos prompts`,
    /// `elastos allow ID`, `elastos deny ID`); `deny`, for a headless node.
    #[serde(default = "prompt_fallback_default")]
    pub prompt_fallback: PromptFallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decider {
    Development,
    Shell,
}

impl PolicyConfig {
    /// Whether a package of `publisher`, running as `name`, is the one the node names as its
    /// shell: its name, a first-party publisher, and the configured publisher if there is one.
    pub fn is_the_shell(&self, name: &str, publisher: &str, first_party: bool) -> bool {
        name == self.shell
            && first_party
            && self
                .shell_publisher
                .as_deref()
                .is_none_or(|p| p == publisher)
    }
}

impl Decider {
    /// The policy's name in `status` and the audit log.
    pub fn policy_name(self) -> &'static str {
        match self {
            Decider::Development => crate::policy::NAME,
            Decider::Shell => "shell",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFallback {
    Prompt,
    Deny,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            decider: decider_default(),
            shell: shell_default(),
            shell_publisher: None,
            shell_wait: shell_wait_default(),
            prompt_fallback: prompt_fallback_default(),
        }
    }
}

fn decider_default() -> Decider {
    Decider::Shell
}
fn shell_default() -> String {
    "shell".into()
}
fn shell_wait_default() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn prompt_fallback_default() -> PromptFallback {
    PromptFallback::Prompt
}

/// Confinement fails closed: a capsule whose layer this machine cannot apply does not start.
/// Running without one takes naming it here, node-wide; `ps`, the capsule's log and the audit
/// log then say so for every capsule that runs without it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfinementConfig {
    /// Layers capsules may run without when the machine cannot provide them:
    /// `user-namespace`, `namespaces`, `uid`, `cgroups`, `storage-quota`, `landlock-scope`.
    /// Never `private-root`: see [`NEVER_WITHOUT`].
    #[serde(default)]
    pub allow_without: Vec<String>,
}

/// The layers `allow_without` may name.
pub const OPTIONAL_LAYERS: [&str; 6] = [
    "user-namespace",
    "namespaces",
    "uid",
    "cgroups",
    "storage-quota",
    "landlock-scope",
];

/// Layers no configuration may waive, each with why.
pub const NEVER_WITHOUT: [(&str, &str); 3] = [
    (
        "private-root",
        "without a private root a capsule of a supervisor run by a normal user keeps the operator's uid and sees the host's tree, the session bus's socket among it; run where user namespaces are allowed, or as root",
    ),
    ("landlock", "it is the file system's and the network's only fence inside the capsule"),
    ("seccomp", "it keeps the kernel's riskiest calls out of reach"),
];

/// How the supervisor runs capsules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Capsules started by `elastos up`: package files, capsule directories, or names of
    /// capsules already in the content store.
    #[serde(default)]
    pub default_capsules: Vec<String>,
    /// At most this many restarts of one capsule within `restart_window`, then it is marked
    /// failed and stays down.
    #[serde(default = "restart_intensity_default")]
    pub restart_intensity: u32,
    #[serde(default = "restart_window_default", with = "humantime_serde_secs")]
    pub restart_window: std::time::Duration,
    /// The deadline of a call when the caller asks for none (and the longest it may ask for).
    #[serde(default = "call_deadline_default", with = "humantime_serde_secs")]
    pub call_deadline: std::time::Duration,
    /// Calls one capsule may have in flight before it is answered `busy`.
    #[serde(default = "max_in_flight_default")]
    pub max_in_flight: usize,
    /// When the supervisor runs as root, each capsule runs as its own host uid and gid from
    /// this base upwards (a range no user of the machine should have).
    #[serde(default = "capsule_uid_base_default")]
    pub capsule_uid_base: u32,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            default_capsules: Vec::new(),
            restart_intensity: restart_intensity_default(),
            restart_window: restart_window_default(),
            call_deadline: call_deadline_default(),
            max_in_flight: max_in_flight_default(),
            capsule_uid_base: capsule_uid_base_default(),
        }
    }
}

fn restart_intensity_default() -> u32 {
    5
}
fn restart_window_default() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn call_deadline_default() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}
fn max_in_flight_default() -> usize {
    64
}

fn capsule_uid_base_default() -> u32 {
    200_000
}

/// Durations in the config file are written the human way ("10s", "2m").
mod humantime_serde_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Make every audit record durable before its call is answered (not only denials, grants and
    /// lifecycle events). Costs one fdatasync per call batch.
    #[serde(default)]
    pub strict: bool,
    /// One record for every allowed call. Without it (the default) a token's first use, every
    /// use of a max-uses token, and every denial, grant and revocation are recorded exactly,
    /// while repeated allowed calls alike (same caller, token, action and resource) are summed
    /// up in one record per 10 ms interval: the log grows with activity, not traffic. A strict
    /// node keeps one record per call.
    #[serde(default)]
    pub per_call: bool,
    /// Bytes the audit log may hold before `elastos status` and `elastos doctor` warn. Nothing
    /// is ever dropped by itself: `elastos audit prune` removes what the operator decides.
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Bytes after which the log moves on to a new segment file (default 64 MiB); `audit prune`
    /// removes whole segments.
    #[serde(default)]
    pub segment_size: Option<u64>,
}

fn format_default() -> u32 {
    elastos_schema::versions::STATE
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {why}; fix or remove the file")]
    Invalid {
        path: std::path::PathBuf,
        why: String,
    },
    #[error(
        "{path}: format {found} is unknown to this elastos (it knows {known}); use a newer elastos"
    )]
    UnknownFormat {
        path: std::path::PathBuf,
        found: u32,
        known: u32,
    },
}

impl Config {
    /// Reads the node's settings; never writes.
    pub fn load(home: &Home) -> Result<Config, ConfigError> {
        let path = home.config_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => {
                return Err(ConfigError::Invalid {
                    path,
                    why: e.to_string(),
                })
            }
        };
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if cfg.format != elastos_schema::versions::STATE {
            return Err(ConfigError::UnknownFormat {
                path,
                found: cfg.format,
                known: elastos_schema::versions::STATE,
            });
        }
        for named in &cfg.confinement.allow_without {
            if let Some((layer, why)) = NEVER_WITHOUT.iter().find(|(l, _)| l == named) {
                return Err(ConfigError::Invalid {
                    path,
                    why: format!(
                        "[confinement] allow_without: `{layer}` can never be left out: {why}"
                    ),
                });
            }
        }
        if let Some(bad) = cfg
            .confinement
            .allow_without
            .iter()
            .find(|l| !OPTIONAL_LAYERS.contains(&l.as_str()))
        {
            return Err(ConfigError::Invalid {
                path,
                why: format!(
                    "[confinement] allow_without: `{bad}` is not a layer that may be left out (one of {})",
                    OPTIONAL_LAYERS.join(", ")
                ),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_audit_is_read_and_typos_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().to_path_buf());
        assert!(!Config::load(&home).unwrap().audit.strict);
        std::fs::write(home.config_file(), "format = 1\n[audit]\nstrict = true\n").unwrap();
        assert!(Config::load(&home).unwrap().audit.strict);
        std::fs::write(home.config_file(), "format = 1\n[audit]\nstrickt = true\n").unwrap();
        let err = Config::load(&home).unwrap_err().to_string();
        assert!(err.contains("strickt"), "{err}");
    }

    /// The shell decides unless the node says otherwise; the development policy is only ever an
    /// explicit setting, and a misspelt decider is refused rather than read as either.
    #[test]
    fn the_shell_decides_by_default_and_development_only_when_set() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().to_path_buf());
        let policy = |home: &Home| Config::load(home).unwrap().policy;
        let none = policy(&home);
        assert_eq!(none.decider, Decider::Shell);
        assert_eq!(none.decider.policy_name(), "shell");
        assert_eq!(none.shell, "shell");
        assert_eq!(none.shell_wait, std::time::Duration::from_secs(10));
        assert_eq!(none.prompt_fallback, PromptFallback::Prompt);
        // A file that says nothing of [policy] (or only part of it) keeps the defaults.
        std::fs::write(home.config_file(), "format = 1\n[audit]\nstrict = true\n").unwrap();
        assert_eq!(policy(&home).decider, Decider::Shell);
        std::fs::write(
            home.config_file(),
            "format = 1\n[policy]\nshell_wait = \"2s\"\n",
        )
        .unwrap();
        let part = policy(&home);
        assert_eq!(part.decider, Decider::Shell);
        assert_eq!(part.shell_wait, std::time::Duration::from_secs(2));
        std::fs::write(
            home.config_file(),
            "format = 1\n[policy]\ndecider = \"development\"\n",
        )
        .unwrap();
        let dev = policy(&home);
        assert_eq!(dev.decider, Decider::Development);
        assert_eq!(dev.decider.policy_name(), crate::policy::NAME);
        std::fs::write(
            home.config_file(),
            "format = 1\n[policy]\ndecider = \"shell\"\n",
        )
        .unwrap();
        assert_eq!(policy(&home).decider, Decider::Shell);
        std::fs::write(
            home.config_file(),
            "format = 1\n[policy]\ndecider = \"permissive\"\n",
        )
        .unwrap();
        let err = Config::load(&home).unwrap_err().to_string();
        assert!(err.contains("permissive"), "{err}");
    }

    #[test]
    fn only_known_layers_may_be_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().to_path_buf());
        assert!(Config::load(&home)
            .unwrap()
            .confinement
            .allow_without
            .is_empty());
        std::fs::write(
            home.config_file(),
            "format = 1\n[confinement]\nallow_without = [\"cgroups\", \"uid\"]\n",
        )
        .unwrap();
        assert_eq!(
            Config::load(&home).unwrap().confinement.allow_without,
            ["cgroups", "uid"]
        );
        // Every layer capsule-host may find missing can be named (its `missing` list).
        let all = [
            "user-namespace",
            "namespaces",
            "uid",
            "cgroups",
            "storage-quota",
            "landlock-scope",
        ];
        std::fs::write(
            home.config_file(),
            format!(
                "format = 1\n[confinement]\nallow_without = {}\n",
                serde_json::to_string(&all).unwrap()
            ),
        )
        .unwrap();
        assert_eq!(Config::load(&home).unwrap().confinement.allow_without, all);
        // The private root, Landlock and seccomp can never be left out, each refused with why.
        for (layer, why) in [
            ("seccomp", "riskiest calls"),
            ("landlock", "only fence"),
            ("private-root", "keeps the operator's uid"),
        ] {
            std::fs::write(
                home.config_file(),
                format!("format = 1\n[confinement]\nallow_without = [\"{layer}\"]\n"),
            )
            .unwrap();
            let err = Config::load(&home).unwrap_err().to_string();
            assert!(
                err.contains(&format!("`{layer}` can never be left out")) && err.contains(why),
                "{err}"
            );
        }
        std::fs::write(
            home.config_file(),
            "format = 1\n[confinement]\nallow_without = [\"firewall\"]\n",
        )
        .unwrap();
        let err = Config::load(&home).unwrap_err().to_string();
        assert!(err.contains("`firewall` is not a layer"), "{err}");
    }
}
