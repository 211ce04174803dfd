//! The crate's modules form layers (documented in `src/lib.rs`): a module may import
//! only from itself and the layers below it. This test reads every file of `src/` and
//! fails on an import that reaches up, naming the file, the line and both layers.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom up, as in the table of `src/lib.rs`.
const LAYERS: &[&str] = &[
    "sync",
    "stats",
    "observe",
    "timer",
    "breaker",
    "wait",
    "message",
    "error",
    "dead_letter",
    "mailbox",
    "group",
    "table",
    "router",
    "delivery",
    "cluster",
    "system",
    "tokio",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// Items the crate root re-exports, by the module they come from (`crate::Name`).
fn root_exports(lib: &str) -> HashMap<String, String> {
    let mut exports = HashMap::new();
    for statement in lib.split(';') {
        let statement = statement.trim();
        let Some(path) = statement.strip_prefix("pub use crate::") else {
            continue;
        };
        let module = path.split("::").next().unwrap().to_string();
        let names = path.rsplit("::").next().unwrap();
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.trim();
            if !name.is_empty() {
                exports.insert(name.to_string(), module.clone());
            }
        }
    }
    exports
}

/// The modules `crate::…` paths on `line` name.
fn imports(line: &str, exports: &HashMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if let Some(module) = exports.get(&name) {
            found.push(module.clone());
        } else if rank(&name).is_some() {
            found.push(name);
        }
    }
    found
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let exports = root_exports(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let own = rank(&module)
            .unwrap_or_else(|| panic!("{module} is not in LAYERS (src/lib.rs's table)"));
        for (n, line) in fs::read_to_string(file).unwrap().lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for import in imports(line, &exports) {
                let theirs = rank(&import).unwrap();
                if theirs > own {
                    violations.push(format!(
                        "{}:{}: `{module}` imports from `{import}`, a layer above it",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn every_module_has_a_layer() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        let line = line.trim();
        let declared = line
            .strip_prefix("mod ")
            .or_else(|| line.strip_prefix("pub mod "))
            .and_then(|rest| rest.strip_suffix(';'));
        if let Some(module) = declared {
            assert!(rank(module).is_some(), "`{module}` has no layer in LAYERS");
            assert!(
                lib.contains(&format!("| `{module}` |")),
                "`{module}` is missing from lib.rs's table"
            );
        }
    }
}

#[test]
fn the_check_catches_an_upward_import() {
    let exports: HashMap<String, String> =
        [("MessageSystem".to_string(), "system".to_string())].into();
    assert_eq!(
        imports("use crate::router::Destination;", &exports),
        ["router"]
    );
    assert_eq!(
        imports("let s: crate::MessageSystem;", &exports),
        ["system"]
    );
    assert!(imports("use std::sync::Arc;", &exports).is_empty());
    assert!(rank("mailbox") < rank("router"));
}
