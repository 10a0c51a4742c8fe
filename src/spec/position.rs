//! Where each key and value of a YAML document stands (line:column), indexed by its config path
//! (`routes[3].match.hosts[0]`), so every config error can point at the text that caused it.

use rustc_hash::FxHashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};

use super::limits::Budget;
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Positions of every key and value in a document.
#[derive(Debug, Default)]
pub struct PositionIndex {
    keys: FxHashMap<String, Position>,
    values: FxHashMap<String, Position>,
    /// Nodes in the document with aliases expanded: what one deserializing pass walks.
    nodes: u64,
}

impl PositionIndex {
    /// Indexes `text`, checking the document's nesting and alias expansion against
    /// [`super::limits`] as it goes; on a YAML syntax error or a limit exceeded, returns the
    /// position and the message.
    ///
    /// Pulls events one at a time rather than through `Parser::load`: that loader recurses once
    /// per nesting level (a deep document overflows the stack before any limit could be checked)
    /// and cannot be stopped early.
    pub fn build(text: &str) -> Result<Self, (Position, String)> {
        let mut builder = Builder::default();
        let mut budget = Budget::default();
        let mut parser = Parser::new_from_str(text);
        // Only the first document is indexed (a second one is an error the deserializer
        // reports), but every document is checked against the limits before it is built.
        let mut documents = 0;
        loop {
            let (event, mark) = parser.next_token().map_err(|e| {
                let message = match e.info() {
                    // The scanner reads ahead past 255 open flow brackets before the parser
                    // sends the events the budget would refuse: the same mistake.
                    "recursion limit exceeded" => Budget::too_deep(),
                    info => format!("YAML syntax error: {info}"),
                };
                (to_position(e.marker()), message)
            })?;
            budget
                .on_event(&event)
                .map_err(|message| (to_position(&mark), message))?;
            match event {
                Event::StreamEnd => {
                    builder.index.nodes = budget.nodes();
                    return Ok(builder.index);
                }
                Event::DocumentStart => documents += 1,
                event if documents == 1 => builder.on_event(event, mark),
                _ => {}
            }
        }
    }

    /// Position of the value at `path`, else of its key, else of the nearest indexed ancestor.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut probe = path;
        loop {
            if let Some(p) = self.values.get(probe).or_else(|| self.keys.get(probe)) {
                return Some(*p);
            }
            let cut = probe.rfind(['.', '['])?;
            probe = &probe[..cut];
        }
    }

    /// Nodes in the document with every alias expanded.
    pub fn nodes(&self) -> u64 {
        self.nodes
    }

    /// Position of the key at `path` (where an unknown key is written), falling back to `find`.
    pub fn find_key(&self, path: &str) -> Option<Position> {
        self.keys.get(path).copied().or_else(|| self.find(path))
    }
}

fn to_position(m: &Marker) -> Position {
    Position {
        line: m.line(),
        // yaml-rust2 counts columns from 0.
        column: m.col() + 1,
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        /// No key read yet.
        first: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    index: PositionIndex,
}

impl Builder {
    /// The path of the value about to be read, or `None` when a map key is expected.
    fn value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map {
                path, key: Some(k), ..
            }) => Some(join_key(path, k)),
            Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
        }
    }

    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = to_position(&mark);
        match ev {
            Event::Scalar(text, ..) => match self.value_path() {
                None => {
                    if let Some(Frame::Map { path, key, first }) = self.stack.last_mut() {
                        // yaml-rust2 marks a block mapping at its first `:`; the map starts
                        // where its first key does (a flow map's `{` comes earlier and stays).
                        if std::mem::take(first) {
                            if let Some(at) = self.index.values.get_mut(path.as_str()) {
                                if (pos.line, pos.column) < (at.line, at.column) {
                                    *at = pos;
                                }
                            }
                        }
                        self.index.keys.insert(join_key(path, &text), pos);
                        *key = Some(text);
                    }
                }
                Some(p) => {
                    self.index.values.insert(p, pos);
                    self.value_done();
                }
            },
            Event::Alias(_) => {
                if let Some(p) = self.value_path() {
                    self.index.values.insert(p, pos);
                    self.value_done();
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex key cannot be a config path; index under a placeholder.
                let path = self.value_path().unwrap_or_else(|| "?".to_string());
                self.index.values.entry(path.clone()).or_insert(pos);
                if matches!(ev, Event::MappingStart(..)) {
                    self.stack.push(Frame::Map {
                        path,
                        key: None,
                        first: true,
                    });
                } else {
                    self.stack.push(Frame::Seq { path, index: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_keys_and_sequence_items() {
        let text = "listen: [\"a\"]\nroutes:\n  - name: one\n    match:\n      hosts: [x]\n  - name: two\n";
        let idx = PositionIndex::build(text).unwrap();
        assert_eq!(
            idx.find("routes[0].name"),
            Some(Position {
                line: 3,
                column: 11
            })
        );
        assert_eq!(
            idx.find("routes[1].name"),
            Some(Position {
                line: 6,
                column: 11
            })
        );
        assert_eq!(
            idx.find_key("routes[1].name"),
            Some(Position { line: 6, column: 5 })
        );
        assert_eq!(idx.find("routes[0].match.hosts[0]").unwrap().line, 5);
        // An unknown child falls back to its parent.
        assert_eq!(idx.find("routes[1].nope").unwrap().line, 6);
        // A block mapping starts at its first key; a flow mapping at its `{`.
        assert_eq!(idx.find("routes[1]"), Some(Position { line: 6, column: 5 }));
        assert_eq!(
            idx.find("routes[0].match"),
            Some(Position { line: 5, column: 7 })
        );
        let flow = PositionIndex::build(
            "a: {b: 1}
",
        )
        .unwrap();
        assert_eq!(flow.find("a"), Some(Position { line: 1, column: 4 }));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let (pos, _) = PositionIndex::build("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(pos.line >= 1);
    }
}
