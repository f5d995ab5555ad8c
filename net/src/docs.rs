//! Man pages and shell completions generated from a daemon's command line, for
//! the packages (`cargo xtask package` runs each daemon's hidden `docs` command).

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// A file or directory of the documentation could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct DocsError {
    path: PathBuf,
    source: std::io::Error,
}

/// The shells a completion script is written for.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `dir/man/NAME.1` with one page per visible subcommand (`NAME-run.1`,
/// ...), and `dir/completions/` with `NAME.bash`, `_NAME` (zsh) and `NAME.fish`.
/// Returns the files written.
pub fn write(command: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let mut written = Vec::new();
    let man_dir = dir.join("man");
    create_dir(&man_dir)?;
    // Building resolves the subcommands' display names (`sluice-agent-run`),
    // which name their pages; the help subcommand gets no page of its own.
    let mut command = command.disable_help_subcommand(true);
    command.build();
    man_pages(&command, &man_dir, &mut written)?;

    let completions_dir = dir.join("completions");
    create_dir(&completions_dir)?;
    let name = command.get_name().to_owned();
    for shell in SHELLS {
        let file = clap_complete::generate_to(shell, &mut command, &name, &completions_dir)
            .map_err(|source| DocsError { path: completions_dir.clone(), source })?;
        written.push(file);
    }
    Ok(written)
}

/// The page of `command`, then those of its visible subcommands, depth first.
fn man_pages(command: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), DocsError> {
    let page = clap_mangen::Man::new(command.clone());
    let file = page
        .generate_to(dir)
        .map_err(|source| DocsError { path: dir.join(page.get_filename()), source })?;
    written.push(file);
    for subcommand in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        man_pages(subcommand, dir, written)?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), DocsError> {
    std::fs::create_dir_all(dir).map_err(|source| DocsError { path: dir.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> clap::Command {
        clap::Command::new("sluice-example")
            .version("1.2.3")
            .about("An example daemon")
            .subcommand(clap::Command::new("run").about("Run it").arg(clap::Arg::new("config").long("config")))
            .subcommand(clap::Command::new("docs").hide(true))
    }

    #[test]
    fn writes_a_page_per_visible_subcommand_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(example(), dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|file| file.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "man/sluice-example.1",
                "man/sluice-example-run.1",
                "completions/sluice-example.bash",
                "completions/_sluice-example",
                "completions/sluice-example.fish",
            ]
        );
        let run_page = std::fs::read_to_string(dir.path().join("man/sluice-example-run.1")).unwrap();
        assert!(run_page.contains("config"), "{run_page}");
        let bash = std::fs::read_to_string(dir.path().join("completions/sluice-example.bash")).unwrap();
        assert!(bash.contains("sluice-example"), "{bash}");
    }
}
