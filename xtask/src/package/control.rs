//! The `DEBIAN/` files of a package: `control`, and the maintainer scripts of a
//! daemon, which must work where systemd is not PID 1 (containers, chroots).

/// What `DEBIAN/control` says.
pub struct Fields<'a> {
    pub package: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub maintainer: &'a str,
    pub installed_kib: u64,
    /// `None`: depends on nothing (architecture-independent files).
    pub depends: Option<&'a str>,
    pub summary: &'a str,
    pub description: &'a str,
}

/// Width of the long description's lines, the leading space included.
const DESCRIPTION_WIDTH: usize = 79;

impl Fields<'_> {
    pub fn render(&self) -> String {
        let mut text = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: {}\nInstalled-Size: {}\n",
            self.package, self.version, self.arch, self.maintainer, self.installed_kib
        );
        if let Some(depends) = self.depends.filter(|d| !d.is_empty()) {
            text.push_str(&format!("Depends: {depends}\n"));
        }
        text.push_str(&format!("Section: admin\nPriority: optional\nDescription: {}\n", self.summary));
        for line in wrap(self.description, DESCRIPTION_WIDTH - 1) {
            text.push_str(&format!(" {line}\n"));
        }
        text
    }
}

/// Words of `text` in lines of at most `width` characters (a longer word alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// `postinst`, `prerm` and `postrm` of the daemon whose unit is `unit`.
///
/// Nothing is started or enabled on install: the daemon needs a configuration
/// and an identity first. systemd is asked only where it runs
/// (`/run/systemd/system` exists), so the packages install in containers too.
pub fn maintainer_scripts(unit: &str) -> Vec<(&'static str, String)> {
    let postinst = format!(
        r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ ! -d {state_dir} ]; then
    # Identities (private keys) and the agent's journal: root's alone.
    install -d -m 0700 {state_dir}
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # After an upgrade a running daemon goes on with the new binary.
    if [ "$1" = configure ] && [ -n "$2" ]; then
        systemctl try-restart {unit} || true
    fi
fi
exit 0
"#,
        state_dir = super::STATE_DIR,
    );
    let prerm = format!(
        r#"#!/bin/sh
set -e
if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop {unit} || true
    fi
    # Works without a running systemd; an enabled unit left behind would be a
    # dangling link once its file is gone.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload disable {unit} >/dev/null 2>&1 || true
    fi
fi
exit 0
"#
    );
    let postrm = format!(
        r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
    # Only when empty: identities and journals are never deleted by a purge,
    # and the other daemon's package may still use it.
    rmdir {state_dir} 2>/dev/null || true
fi
exit 0
"#,
        state_dir = super::STATE_DIR,
    );
    vec![("postinst", postinst), ("prerm", prerm), ("postrm", postrm)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_file_has_a_wrapped_long_description() {
        let fields = Fields {
            package: "sluice-agent",
            version: "1.2.3",
            arch: "amd64",
            maintainer: "m <m@example.invalid>",
            installed_kib: 42,
            depends: Some("libc6 (>= 2.34), libgcc-s1"),
            summary: "short",
            description: &"word ".repeat(40),
        };
        let text = fields.render();
        assert!(text.starts_with("Package: sluice-agent\nVersion: 1.2.3\nArchitecture: amd64\n"), "{text}");
        assert!(text.contains("\nDepends: libc6 (>= 2.34), libgcc-s1\n"), "{text}");
        assert!(text.contains("\nInstalled-Size: 42\n"), "{text}");
        let long: Vec<&str> = text.split_once("Description: short\n").unwrap().1.lines().collect();
        assert!(long.len() > 1, "{text}");
        assert!(long.iter().all(|line| line.starts_with(' ') && line.len() <= DESCRIPTION_WIDTH), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn no_depends_line_without_dependencies() {
        let fields = Fields {
            package: "p",
            version: "1",
            arch: "all",
            maintainer: "m",
            installed_kib: 1,
            depends: None,
            summary: "s",
            description: "d",
        };
        assert!(!fields.render().contains("Depends"));
    }

    #[test]
    fn scripts_ask_systemd_only_where_it_runs() {
        for (name, script) in maintainer_scripts("sluice-agent.service") {
            assert!(script.starts_with("#!/bin/sh\nset -e\n"), "{name}");
            for line in script.lines().filter(|l| l.trim_start().starts_with("systemctl") && !l.contains("disable")) {
                let before = script.split(line).next().unwrap();
                let guard = before.rfind("if [ -d /run/systemd/system ]").expect(name);
                assert!(!before[guard..].contains("\nfi\n"), "{name}: `{line}` outside the systemd guard");
            }
        }
    }
}
