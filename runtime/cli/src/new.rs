//! `eddy new NAME --lang LANG`: a ready operator project (a per-key count
//! and sum, a sample input, a pipeline file and a README) that `eddy build`
//! builds and `eddy run` runs as it is.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use eddy_build::Lang;

/// Create a ready operator project: its source (a per-key count and sum of
/// `amount`), a sample input, a pipeline file and a README with the two
/// commands that build and run it.
#[derive(Args)]
pub struct NewArgs {
    /// The project's name: its directory, its component (NAME.wasm) and its
    /// operator's name in the pipeline. Lowercase letters, digits, `-` and
    /// `_`, starting with a letter.
    name: String,
    /// The operator's language.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Create the project in this directory [default: the current one].
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// For Rust: the eddy-sdk crate to depend on [default: the `sdk/rust`
    /// of the repository this eddy was built from].
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

/// The Rust SDK of the repository this binary was built from.
const REPO_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/rust");

/// Sample events: three keys, one event without `amount`, one whose
/// `amount` is not a number (dead-lettered).
const EVENTS: &str = r#"{"key":"alice","amount":12.5}
{"key":"bob","amount":40}
{"key":"alice","amount":3}
{"key":"carol"}
{"key":"bob","amount":"ten"}
{"key":"alice","amount":0.25}
"#;

/// What the pipeline writes for the sample input (`events.jsonl`),
/// whatever the language.
pub const EXPECTED: &str = r#"{"key":"alice","value":{"count":1,"sum":12.5}}
{"key":"bob","value":{"count":1,"sum":40.0}}
{"key":"alice","value":{"count":2,"sum":15.5}}
{"key":"carol","value":{"count":1,"sum":0.0}}
{"key":"alice","value":{"count":3,"sum":15.75}}
"#;

/// Runs `eddy new`.
pub fn run(a: NewArgs) -> Result<()> {
    let project = create(&a.name, a.lang, &a.dir, a.sdk.as_deref())?;
    let shown = project.display();
    println!(
        "created {shown} ({} operator `{}`)\n\nbuild and run it:\n  cd {shown}\n  eddy build .\n  eddy run pipeline.toml",
        a.lang.name(),
        a.name
    );
    Ok(())
}

/// Creates project `name` in `parent`; its directory.
pub fn create(name: &str, lang: Lang, parent: &Path, sdk: Option<&Path>) -> Result<PathBuf> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!("project name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter");
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists: choose another name or --dir",
            dir.display()
        );
    }
    let mut files: Vec<(String, String)> = match lang {
        Lang::Rust => {
            let sdk = match sdk {
                Some(p) => p.to_path_buf(),
                None => PathBuf::from(REPO_SDK),
            };
            let sdk = sdk.canonicalize().with_context(|| {
                format!(
                    "the Rust SDK {} is not there: give its path (the sdk/rust of an eddy repository) with --sdk",
                    sdk.display()
                )
            })?;
            // TOML basic string: escape what it must.
            let sdk = sdk
                .display()
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            vec![
                (
                    "Cargo.toml".into(),
                    include_str!("../templates/rust/Cargo.toml").replace("{{sdk}}", &sdk),
                ),
                // The counter the README teaches: the example operator itself.
                (
                    "src/lib.rs".into(),
                    include_str!("../../../plugins/counter/src/lib.rs").into(),
                ),
                // The SDK needs the toolchain the repository pins.
                (
                    "rust-toolchain.toml".into(),
                    include_str!("../../../rust-toolchain.toml").into(),
                ),
            ]
        }
        Lang::Python => vec![(
            "app.py".into(),
            include_str!("../templates/python/app.py").into(),
        )],
        Lang::Js => vec![(
            format!("{name}.js"),
            include_str!("../templates/js/main.js").into(),
        )],
        Lang::C => vec![(
            format!("{name}.c"),
            include_str!("../templates/c/main.c").into(),
        )],
    };
    for (_, text) in &mut files {
        *text = text.replace("{{name}}", name);
    }
    files.push(("events.jsonl".into(), EVENTS.into()));
    files.push(("expected-output.jsonl".into(), EXPECTED.into()));
    files.push(("pipeline.toml".into(), pipeline(name)));
    files.push(("README.md".into(), readme(name, lang)));
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

fn pipeline(name: &str) -> String {
    format!(
        r#"# {name}: `eddy build .` makes {name}.wasm, then `eddy run pipeline.toml`.
workers = 1

[source]
path = "events.jsonl"      # "-" for stdin
key = "key"                # field holding the routing key

[[operator]]
name = "{name}"
component = "{name}.wasm"

[sink]
path = "-"                 # "-" for stdout
dead_letter = "dead-letter.jsonl"

[state]
dir = "eddy-data"
"#
    )
}

fn readme(name: &str, lang: Lang) -> String {
    let source = match lang {
        Lang::Rust => "src/lib.rs".to_string(),
        Lang::Python => "app.py".into(),
        Lang::Js => format!("{name}.js"),
        Lang::C => format!("{name}.c"),
    };
    format!(
        r#"# {name}

An Eddy operator in {lang}: for every event, the key's running count of
events and the sum of their `amount` (0 when absent), emitted as
`{{"count": .., "sum": ..}}` keyed like the input. An `amount` that is not a
number sends the event to the dead-letter file with the reason.

Build it, then run the pipeline over the sample input (`events.jsonl`):

```sh
eddy build .
eddy run pipeline.toml
```

The output is `expected-output.jsonl`; the event with `"amount":"ten"` is
in `dead-letter.jsonl`. The state is kept in `eddy-data/`: run again and
only lines appended to `events.jsonl` since are handled. Change
`{source}`, build again, and swap the running operator for the new
version with `eddy swap` (see the main README).
"#,
        lang = lang.name()
    )
}
