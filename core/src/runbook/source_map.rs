//! Where every node of a YAML document sits: field path → line and column.
//!
//! serde turns YAML into typed file structs but forgets positions, and serde-saphyr's errors
//! carry a position but no field path. Every Baton diagnostic needs both. So the text is read a
//! second time with the YAML event parser that serde-saphyr itself is built on (re-exported as
//! `serde_saphyr::granit_parser`, hence identical line/column numbering) and, for every node, we
//! record its path (`steps[1].with.command`), the position of its key and the extent of its value.
//!
//! The map answers two questions: "where is `steps[1].id`?" for checks that run after
//! deserialization, and "which field is at 4:17?" for errors reported by serde-saphyr.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Marker, Parser, StructureStyle};

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Pos {
    /// The first character of a document, the fallback when nothing better is known.
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(marker: &Marker) -> Pos {
        Pos { line: marker.line().max(1), column: marker.col() + 1 }
    }
}

/// What kind of YAML node sits at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Scalar,
    /// A list; `flow` for `[a, b]`, not for `- a` lines.
    List {
        flow: bool,
    },
    /// A mapping; `flow` for `{a: 1}`, not for `a: 1` lines.
    Mapping {
        flow: bool,
    },
    Alias,
}

/// One node: where its key is (for mapping values), where its value starts and ends.
#[derive(Debug, Clone)]
struct Node {
    path: String,
    key: Option<Pos>,
    start: Pos,
    end: Pos,
    kind: Kind,
    /// Byte range of the value in the source, for quoting what was found.
    bytes: Option<(usize, usize)>,
}

/// A YAML syntax error found while indexing, with the path of the node being read.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// The field being read when it stopped (may be empty for the document root).
    pub path: String,
    /// The parser's own description of the problem.
    pub message: String,
}

/// Path → position index of one YAML document (the first one in the text).
#[derive(Debug, Clone)]
pub(crate) struct SourceMap<'a> {
    text: &'a str,
    nodes: Vec<Node>,
    by_path: HashMap<String, usize>,
}

/// The parser's view of the container being filled.
enum Frame {
    Mapping {
        node: usize,
        /// The key just read, waiting for its value.
        pending_key: Option<(String, Pos)>,
    },
    List {
        node: usize,
        next_index: usize,
    },
    /// A complex (non-scalar) mapping key: skipped, we only count nesting.
    SkipKey {
        depth: usize,
    },
}

impl<'a> SourceMap<'a> {
    /// Indexes `text`. Fails only on YAML syntax errors.
    pub fn build(text: &'a str) -> Result<SourceMap<'a>, SyntaxError> {
        let mut map = SourceMap { text, nodes: Vec::new(), by_path: HashMap::new() };
        let mut stack: Vec<Frame> = Vec::new();
        let mut seen_root = false;
        for item in Parser::new_from_str(text) {
            let (event, span) = match item {
                Ok(pair) => pair,
                Err(err) => {
                    return Err(SyntaxError {
                        pos: Pos::from_marker(err.marker()),
                        path: map.current_path(&stack),
                        message: err.info(),
                    });
                }
            };
            let start = Pos::from_marker(&span.start);
            let end = Pos::from_marker(&span.end);
            let bytes = span.byte_range().map(|r| (r.start, r.end));
            // Complex keys: swallow everything until the key's collection closes.
            if let Some(Frame::SkipKey { depth }) = stack.last_mut() {
                match event {
                    Event::MappingStart(..) | Event::SequenceStart(..) => *depth += 1,
                    Event::MappingEnd | Event::SequenceEnd => {
                        *depth -= 1;
                        if *depth == 0 {
                            stack.pop();
                            map.key_done(&mut stack, "?".to_string(), start);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match event {
                Event::DocumentStart(..) if seen_root => break,
                Event::DocumentEnd if seen_root => break,
                Event::Scalar(value, ..) => {
                    if map.expecting_key(&stack) {
                        map.key_done(&mut stack, value.into_owned(), start);
                    } else {
                        seen_root = true;
                        map.push_node(&mut stack, Kind::Scalar, start, end, bytes);
                    }
                }
                Event::Alias(..) => {
                    if map.expecting_key(&stack) {
                        map.key_done(&mut stack, "*".to_string(), start);
                    } else {
                        map.push_node(&mut stack, Kind::Alias, start, end, bytes);
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    if map.expecting_key(&stack) {
                        stack.push(Frame::SkipKey { depth: 1 });
                        continue;
                    }
                    seen_root = true;
                    let (is_map, flow) = match &event {
                        Event::MappingStart(style, ..) => (true, *style == StructureStyle::Flow),
                        Event::SequenceStart(style, ..) => (false, *style == StructureStyle::Flow),
                        _ => (false, false),
                    };
                    let kind = if is_map { Kind::Mapping { flow } } else { Kind::List { flow } };
                    let node = map.push_node(&mut stack, kind, start, end, bytes);
                    stack.push(if is_map {
                        Frame::Mapping { node, pending_key: None }
                    } else {
                        Frame::List { node, next_index: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    if let Some(Frame::Mapping { node, .. } | Frame::List { node, .. }) = stack.pop() {
                        map.nodes[node].end = end;
                        if let (Some((from, _)), Some((_, to))) = (map.nodes[node].bytes, bytes) {
                            map.nodes[node].bytes = Some((from, to));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(map)
    }

    fn expecting_key(&self, stack: &[Frame]) -> bool {
        matches!(stack.last(), Some(Frame::Mapping { pending_key: None, .. }))
    }

    fn key_done(&mut self, stack: &mut [Frame], key: String, pos: Pos) {
        if let Some(Frame::Mapping { pending_key, .. }) = stack.last_mut() {
            *pending_key = Some((key, pos));
        }
    }

    /// The path the next value will get, for error reporting mid-parse.
    fn current_path(&self, stack: &[Frame]) -> String {
        match stack.last() {
            Some(Frame::Mapping { node, pending_key: Some((key, _)) }) => join_key(&self.nodes[*node].path, key),
            Some(Frame::Mapping { node, .. } | Frame::List { node, .. }) => self.nodes[*node].path.clone(),
            _ => String::new(),
        }
    }

    /// Records a value node under the container on top of `stack`; returns its index.
    fn push_node(
        &mut self,
        stack: &mut [Frame],
        kind: Kind,
        start: Pos,
        end: Pos,
        bytes: Option<(usize, usize)>,
    ) -> usize {
        let (path, key) = match stack.last_mut() {
            Some(Frame::Mapping { node, pending_key }) => {
                let (name, pos) = pending_key.take().unwrap_or_else(|| ("?".to_string(), Pos::START));
                (join_key(&self.nodes[*node].path, &name), Some(pos))
            }
            Some(Frame::List { node, next_index }) => {
                let path = format!("{}[{}]", self.nodes[*node].path, next_index);
                *next_index += 1;
                (path, None)
            }
            _ => (String::new(), None),
        };
        let index = self.nodes.len();
        // A duplicate key keeps its first position; serde-saphyr rejects duplicates anyway.
        self.by_path.entry(path.clone()).or_insert(index);
        self.nodes.push(Node { path, key, start, end, kind, bytes });
        index
    }

    fn node(&self, path: &str) -> Option<&Node> {
        self.by_path.get(path).map(|&i| &self.nodes[i])
    }

    /// The closest recorded ancestor of `path` (or `path` itself).
    fn nearest(&self, path: &str) -> Option<&Node> {
        let mut current = path;
        loop {
            if let Some(node) = self.node(current) {
                return Some(node);
            }
            if current.is_empty() {
                return None;
            }
            current = parent_path(current);
        }
    }

    /// Where the value at `path` starts; falls back to the nearest ancestor that exists.
    pub fn value_pos(&self, path: &str) -> Pos {
        self.nearest(path).map_or(Pos::START, |n| n.start)
    }

    /// Where the key of `path` is (the value position for list items and the root).
    pub fn key_pos(&self, path: &str) -> Pos {
        self.nearest(path).map_or(Pos::START, |n| n.key.unwrap_or(n.start))
    }

    /// Where `needle` is written inside the single-line value at `path`: lets a diagnostic point
    /// at `params.x` inside `"--path={{ params.x }}"`. Falls back to the value's start.
    pub fn text_pos(&self, path: &str, needle: &str) -> Pos {
        let Some(node) = self.node(path) else {
            return self.value_pos(path);
        };
        let offset = node
            .bytes
            .and_then(|(from, to)| self.text.get(from..to))
            .filter(|written| !written.contains('\n'))
            .and_then(|written| written.find(needle).map(|i| written[..i].chars().count()));
        match offset {
            Some(chars) => Pos { line: node.start.line, column: node.start.column + chars },
            None => node.start,
        }
    }

    /// Whether the document has a node at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.by_path.contains_key(path)
    }

    /// A short description of the value at `path`, as the user wrote it: `maybe`, `[]`,
    /// `{a: 1}`, or `a list` / `a mapping` for multi-line collections.
    pub fn found(&self, path: &str) -> Option<String> {
        self.node(path).map(|n| self.describe(n))
    }

    fn describe(&self, node: &Node) -> String {
        let written = node.bytes.and_then(|(from, to)| self.text.get(from..to)).map(str::trim);
        let block = matches!(node.kind, Kind::List { flow: false } | Kind::Mapping { flow: false });
        match written {
            Some(text) if !block && !text.is_empty() && !text.contains('\n') => {
                if text.chars().count() > 60 {
                    let short: String = text.chars().take(57).collect();
                    format!("{short}...")
                } else {
                    text.to_string()
                }
            }
            _ => match node.kind {
                Kind::List { .. } => "a list".to_string(),
                Kind::Mapping { .. } => "a mapping".to_string(),
                Kind::Alias => "an alias".to_string(),
                Kind::Scalar if written.is_some_and(|t| t.is_empty()) => "nothing".to_string(),
                Kind::Scalar => "a multi-line string".to_string(),
            },
        }
    }

    /// The path of the mapping key written at `pos`, if any.
    pub fn path_of_key_at(&self, pos: Pos) -> Option<&str> {
        self.nodes.iter().find(|n| n.key == Some(pos)).map(|n| n.path.as_str())
    }

    /// The path of the deepest value starting exactly at `pos`, or else the deepest value whose
    /// extent contains `pos`.
    pub fn path_of_value_at(&self, pos: Pos) -> Option<&str> {
        let exact = self.nodes.iter().rev().find(|n| n.start == pos);
        let containing = || self.nodes.iter().rev().find(|n| n.start <= pos && pos < n.end);
        exact.or_else(containing).map(|n| n.path.as_str())
    }

    /// What is written at the value starting at `pos`, if a node starts there.
    pub fn found_at(&self, pos: Pos) -> Option<String> {
        self.nodes.iter().rev().find(|n| n.start == pos).map(|n| self.describe(n))
    }
}

/// `a.b` + `c` → `a.b.c`; the root path is empty.
pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

/// `steps[1].with.command` → `steps[1].with`; `steps[1]` → `steps`; `name` → ``.
pub(crate) fn parent_path(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
name: x
steps:
  - id: a
    with:
      command: [df, -h]
  - id: b
    with: { command: [] }
params:
  p: { type: int }
";

    fn pos(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn indexes_keys_and_values_by_path() {
        let map = SourceMap::build(DOC).unwrap();
        assert_eq!(map.key_pos("name"), pos(1, 1));
        assert_eq!(map.value_pos("name"), pos(1, 7));
        assert_eq!(map.value_pos("steps[0]"), pos(3, 5));
        assert_eq!(map.key_pos("steps[0].with.command"), pos(5, 7));
        assert_eq!(map.value_pos("steps[0].with.command[1]"), pos(5, 21));
        assert_eq!(map.value_pos("steps[1].with.command"), pos(7, 22));
        assert_eq!(map.found("steps[1].with.command").as_deref(), Some("[]"));
        assert_eq!(map.found("params.p").as_deref(), Some("{ type: int }"));
        assert_eq!(map.found("steps").as_deref(), Some("a list"));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(map.value_pos("steps[1].with.env"), pos(7, 11));
    }

    #[test]
    fn maps_positions_back_to_paths() {
        let map = SourceMap::build(DOC).unwrap();
        assert_eq!(map.path_of_key_at(pos(6, 5)), Some("steps[1].id"));
        assert_eq!(map.path_of_value_at(pos(6, 9)), Some("steps[1].id"));
        assert_eq!(map.path_of_value_at(pos(3, 5)), Some("steps[0]"));
        assert_eq!(map.path_of_value_at(pos(5, 16)), Some("steps[0].with.command"));
        assert_eq!(map.path_of_value_at(pos(5, 18)), Some("steps[0].with.command[0]"));
    }

    #[test]
    fn syntax_errors_carry_position_and_path() {
        let err = SourceMap::build("name: x\nsteps:\n  - id: 'a\n").unwrap_err();
        assert_eq!(err.pos.line, 3, "{err:?}");
        assert!(err.message.contains("quote"), "{err:?}");
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("steps[1].with.command"), "steps[1].with");
        assert_eq!(parent_path("steps[1]"), "steps");
        assert_eq!(parent_path("name"), "");
    }
}
