//! Bounds on what a config document may cost to load, checked on the YAML event stream before
//! anything builds a tree from it.
//!
//! The config is read at startup, on every reload and by `portico validate`, so a hostile or
//! broken file must not be able to exhaust the stack (deep nesting: the YAML loaders and serde
//! recurse once per level), memory (an alias bomb: a few kilobytes of `&a`/`*a` expand to
//! billions of nodes in `serde_yaml_ng::Value`) or time. Limits on single values (durations,
//! sizes) live with their types in `units.rs`; this module owns only the document's shape.

use yaml_rust2::parser::Event;

/// Largest config file read, in bytes. Big real configs (thousands of routes or consumers) stay
/// well under a megabyte.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting of lists and maps. A real config nests about ten levels (a JSON body template
/// inside a transform inside a policy inside a route); the YAML loaders recurse once per level.
pub const MAX_DEPTH: usize = 64;

/// Most nodes (scalars, lists, maps) in the document with every alias expanded: what the
/// deserializer materialises. Enough for about 10,000 routes or 50,000 consumers, and small
/// enough that loading stays well under a second and 256 MiB.
pub const MAX_NODES: u64 = 250_000;

/// Most scalar text in the document with every alias expanded, in bytes.
pub const MAX_EXPANDED_BYTES: u64 = 16 * 1024 * 1024;

/// Node visits that collecting type errors may spend: each error found costs one more
/// deserializing pass over the whole document, so a huge file with many mistakes gets fewer
/// passes (at least two) instead of taking seconds.
pub const MAX_COLLECTING_WORK: u64 = 5_000_000;

/// What a node costs once its aliases are expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    nodes: u64,
    bytes: u64,
}

impl Cost {
    fn add(&mut self, other: Cost) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// A collection being read: its anchor and what it holds so far.
struct Open {
    anchor: usize,
    cost: Cost,
}

/// Follows the event stream and says when the document goes over a limit. Feed it every event,
/// in order; the first `Err` is the message to report (at that event's position).
#[derive(Default)]
pub struct Budget {
    open: Vec<Open>,
    /// Expanded cost of each anchored node seen so far, by anchor id.
    anchored: rustc_hash::FxHashMap<usize, Cost>,
    /// Cost of the finished top-level nodes (of every document in the stream).
    total: Cost,
    /// Whether an alias has been seen (the messages then explain how aliases count).
    aliases: bool,
}

impl Budget {
    /// Accounts for one event.
    pub fn on_event(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.open.len() >= MAX_DEPTH {
                    return Err(Self::too_deep());
                }
                self.open.push(Open {
                    anchor: *anchor,
                    cost: Cost { nodes: 1, bytes: 0 },
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => match self.open.pop() {
                Some(done) => self.finish(done.anchor, done.cost),
                None => Ok(()),
            },
            Event::Scalar(text, _, anchor, _) => self.finish(
                *anchor,
                Cost {
                    nodes: 1,
                    bytes: text.len() as u64,
                },
            ),
            // An alias to an unknown anchor is a syntax error the parser reports itself.
            Event::Alias(id) => {
                self.aliases = true;
                let cost = self.anchored.get(id).copied().unwrap_or_default();
                self.finish(0, cost)
            }
            _ => Ok(()),
        }
    }

    /// Nodes counted so far, with aliases expanded.
    pub fn nodes(&self) -> u64 {
        self.total.nodes
    }

    /// The message for a document nested deeper than [`MAX_DEPTH`].
    pub fn too_deep() -> String {
        format!("the config nests lists and maps more than {MAX_DEPTH} levels deep")
    }

    /// Adds a finished node to its parent (or the total) and checks the limits.
    fn finish(&mut self, anchor: usize, cost: Cost) -> Result<(), String> {
        if anchor != 0 {
            self.anchored.insert(anchor, cost);
        }
        match self.open.last_mut() {
            Some(parent) => parent.cost.add(cost),
            None => self.total.add(cost),
        }
        // Every open collection will hold what its children hold, so the whole document costs
        // at least the total plus the open collections' contents.
        let mut so_far = self.total;
        for open in &self.open {
            so_far.add(open.cost);
        }
        let what = if so_far.nodes > MAX_NODES {
            format!("{MAX_NODES} values (lists, maps and scalars)")
        } else if so_far.bytes > MAX_EXPANDED_BYTES {
            format!("{} MiB of text", MAX_EXPANDED_BYTES >> 20)
        } else {
            return Ok(());
        };
        Err(if self.aliases {
            format!(
                "the config expands to more than {what}, counting every alias `*name` as a copy \
                 of its anchor; refused before building it"
            )
        } else {
            format!(
                "the config holds more than {what}; refused before building it (a long consumer \
                 list can go in auth.consumers_files)"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaml_rust2::parser::Parser;

    /// Runs the budget over `text`; the first limit error, if any.
    fn check(text: &str) -> Result<(), String> {
        let mut parser = Parser::new_from_str(text);
        let mut budget = Budget::default();
        loop {
            let (event, _) = parser.next_token().map_err(|e| e.to_string())?;
            if event == Event::StreamEnd {
                return Ok(());
            }
            budget.on_event(&event)?;
        }
    }

    #[test]
    fn nesting_up_to_the_limit_passes_and_beyond_it_fails() {
        let ok = format!("{}x{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(check(&ok), Ok(()));
        let deep = format!(
            "{}x{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(check(&deep).unwrap_err().contains("more than 64 levels"));
    }

    #[test]
    fn an_alias_bomb_is_counted_as_expanded() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let err = check(&bomb).unwrap_err();
        assert!(err.contains("expands to more than 250000 values"), "{err}");
        assert!(err.contains("alias"), "{err}");
    }

    #[test]
    fn long_strings_repeated_by_aliases_are_counted_as_text() {
        let big = "y".repeat(1 << 20);
        let refs = vec!["*s"; 20].join(", ");
        let err = check(&format!("s: &s {big}\nl: [{refs}]\n")).unwrap_err();
        assert!(err.contains("MiB of text"), "{err}");
    }

    #[test]
    fn a_huge_document_without_aliases_is_told_so() {
        let list = vec!["1"; MAX_NODES as usize + 1].join(", ");
        let err = check(&format!("x: [{list}]\n")).unwrap_err();
        assert!(err.contains("holds more than 250000 values"), "{err}");
        assert!(!err.contains("alias"), "{err}");
    }

    #[test]
    fn ordinary_anchors_and_aliases_pass() {
        let text = "base: &b {timeout: 1s, retries: 2}\nroutes: [*b, *b, *b]\n";
        assert_eq!(check(text), Ok(()));
    }
}
