//! The relay's text conversions, pure: PresentationML (what the datafeed delivers) → WhatsApp
//! text, WhatsApp text → a MessageML fragment the bot can post, and one-line quote snippets.
//!
//! WhatsApp renders `*bold*`, `_italic_`, `~strike~`, `` `code` `` and ```` ```block``` ```` only
//! where a marker touches a non-space character inside and a word boundary outside, on one line.
//! Both directions follow that rule: markers are written so that WhatsApp renders them, and only
//! markers WhatsApp would render are read.

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use serde_json::Value;

use crate::markup::named_entity;
use crate::symphony::messageml::{self, MessageMlError};
use crate::templates::escape_message_ml;

// ---------------------------------------------------------------------------------------------
// PresentationML → WhatsApp text
// ---------------------------------------------------------------------------------------------

/// Elements nested deeper than this are refused: the agent never produces them and the walk below
/// is recursive.
const MAX_DEPTH: usize = 64;

/// A Symphony message as the datafeed delivers it (PresentationML and its EntityJSON `data`) as
/// WhatsApp text: formatting as WhatsApp markers, mentions as `@Display Name`, tags as
/// `#tag`/`$TAG`, links kept, lists, tables and cards flattened into lines, trimmed.
pub fn to_whatsapp(presentation_ml: &str, data: Option<&str>) -> Result<String, MessageMlError> {
    let entities = messageml::entities(data)?;
    let root = parse_tree(presentation_ml)?;
    let renderer = Renderer { entities: &entities };
    Ok(join_lines(renderer.blocks(&root.children, Style::default())))
}

#[derive(Debug)]
enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Element {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn has_class(&self, class: &str) -> bool {
        self.attr("class").is_some_and(|c| c.split_whitespace().any(|c| c == class))
    }

    fn push_text(&mut self, text: &str) {
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(text);
        } else {
            self.children.push(Node::Text(text.to_owned()));
        }
    }

    fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }
}

fn unreadable(e: impl std::fmt::Display) -> MessageMlError {
    MessageMlError(e.to_string())
}

fn parse_tree(presentation_ml: &str) -> Result<Element, MessageMlError> {
    let mut reader = Reader::from_str(presentation_ml);
    reader.config_mut().trim_text(false);
    // The open elements, innermost last; the first is a nameless root that is never closed.
    let mut open = vec![Element::default()];
    loop {
        let event = reader.read_event().map_err(unreadable)?;
        let text = match event {
            Event::Eof => break,
            Event::Start(e) => {
                if open.len() > MAX_DEPTH {
                    return Err(MessageMlError(format!("nested deeper than {MAX_DEPTH} elements")));
                }
                open.push(element(&e)?);
                continue;
            }
            Event::Empty(e) => {
                let empty = element(&e)?;
                if let Some(parent) = open.last_mut() {
                    parent.children.push(Node::Element(empty));
                }
                continue;
            }
            Event::End(_) => {
                if open.len() < 2 {
                    return Err(MessageMlError("unbalanced tags".into()));
                }
                if let Some(closed) = open.pop()
                    && let Some(parent) = open.last_mut()
                {
                    parent.children.push(Node::Element(closed));
                }
                continue;
            }
            Event::Text(t) => t.decode().map_err(unreadable)?.into_owned(),
            Event::CData(c) => c.decode().map_err(unreadable)?.into_owned(),
            Event::GeneralRef(r) => match r.resolve_char_ref().map_err(unreadable)? {
                Some(c) => c.to_string(),
                None => {
                    let name = r.decode().map_err(unreadable)?;
                    // An entity XML does not know is kept as written rather than losing the message.
                    named_entity(&name).map_or_else(|| format!("&{name};"), str::to_owned)
                }
            },
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => continue,
        };
        if let Some(parent) = open.last_mut() {
            parent.push_text(&text);
        }
    }
    match open.pop() {
        Some(root) if open.is_empty() => Ok(root),
        _ => Err(MessageMlError("unbalanced tags".into())),
    }
}

fn element(start: &BytesStart<'_>) -> Result<Element, MessageMlError> {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(unreadable)?;
        let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        let value = match attr.normalized_value_with(XmlVersion::Implicit1_0, 4, named_entity) {
            Ok(v) => v.into_owned(),
            Err(_) => String::from_utf8_lossy(&attr.value).into_owned(),
        };
        attrs.push((key, value));
    }
    Ok(Element { name, attrs, children: Vec::new() })
}

/// The WhatsApp markers already open around the text being rendered: nesting the same marker
/// again would close it early.
#[derive(Debug, Clone, Copy, Default)]
struct Style {
    bold: bool,
    italic: bool,
    strike: bool,
}

/// One output line. Verbatim lines (code blocks, which may hold newlines) are neither trimmed
/// nor re-indented.
#[derive(Debug)]
struct Line {
    text: String,
    verbatim: bool,
}

impl Line {
    fn plain(text: impl Into<String>) -> Self {
        Self { text: text.into(), verbatim: false }
    }
}

struct Renderer<'a> {
    entities: &'a Value,
}

impl Renderer<'_> {
    /// Mixed content as lines: runs of inline content become lines, block elements their own.
    fn blocks(&self, nodes: &[Node], style: Style) -> Vec<Line> {
        let mut lines = Vec::new();
        let mut run = String::new();
        for node in nodes {
            match node {
                Node::Text(text) => run.push_str(&collapse_whitespace(text)),
                Node::Element(e) if self.is_block(e) => {
                    flush_run(&mut run, &mut lines);
                    lines.extend(self.block(e, style));
                }
                Node::Element(e) => run.push_str(&self.inline(e, style)),
            }
        }
        flush_run(&mut run, &mut lines);
        lines
    }

    fn is_block(&self, e: &Element) -> bool {
        if self.entity(e).is_some() {
            // A mention may arrive as `<div class="entity">` (messageml-utils MentionTest).
            return false;
        }
        match e.name.as_str() {
            "p" | "div" | "ul" | "ol" | "li" | "table" | "thead" | "tbody" | "tfoot" | "tr"
            | "pre" | "hr" | "form" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => true,
            "code" => code_text(e).contains('\n'),
            _ => false,
        }
    }

    fn block(&self, e: &Element, style: Style) -> Vec<Line> {
        match e.name.as_str() {
            "ul" => self.list(e, style, None),
            "ol" => {
                let start = e.attr("start").and_then(|s| s.trim().parse().ok()).unwrap_or(1);
                self.list(e, style, Some(start))
            }
            "table" | "thead" | "tbody" | "tfoot" | "tr" => {
                let mut rows = Vec::new();
                self.table_rows(e, style, e.name == "thead", &mut rows);
                rows
            }
            "pre" | "code" => {
                let raw = code_text(e);
                let body = raw.trim_matches('\n');
                if body.trim().is_empty() {
                    Vec::new()
                } else {
                    vec![Line { text: format!("```{body}```"), verbatim: true }]
                }
            }
            "hr" => vec![Line::plain("---")],
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => self.heading(&e.children, style),
            _ if e.has_class("cardHeader") || e.has_class("expandableCardHeader") => {
                self.heading(&e.children, style)
            }
            _ => {
                let (inner, markers) = emphasis(e, style);
                wrap_lines(self.blocks(&e.children, inner), &markers)
            }
        }
    }

    fn heading(&self, nodes: &[Node], style: Style) -> Vec<Line> {
        let lines = self.blocks(nodes, Style { bold: true, ..style });
        if style.bold { lines } else { wrap_lines(lines, &['*']) }
    }

    /// `- item` or `1. item`; an item's further lines (and nested lists) are indented under it.
    fn list(&self, list: &Element, style: Style, mut number: Option<u64>) -> Vec<Line> {
        let mut lines = Vec::new();
        for node in &list.children {
            let Node::Element(child) = node else { continue };
            if child.name != "li" {
                let inner = self.blocks(std::slice::from_ref(node), style);
                lines.extend(indent(inner, "  "));
                continue;
            }
            let marker = match number {
                Some(n) => format!("{n}. "),
                None => "- ".to_owned(),
            };
            number = number.map(|n| n.saturating_add(1));
            let item = self.blocks(&child.children, style);
            if item.is_empty() {
                lines.push(Line::plain(marker.trim_end()));
                continue;
            }
            let pad = " ".repeat(marker.chars().count());
            for (i, line) in item.into_iter().enumerate() {
                let text = match i {
                    0 => format!("{marker}{}", line.text),
                    _ if line.text.is_empty() => String::new(),
                    _ => format!("{pad}{}", line.text),
                };
                lines.push(Line { text, verbatim: line.verbatim });
            }
        }
        lines
    }

    /// One line per row, cells joined with ` | `; header cells (`th`, or any cell of `thead`) bold.
    fn table_rows(&self, e: &Element, style: Style, header: bool, rows: &mut Vec<Line>) {
        if e.name == "tr" {
            let cells: Vec<String> = e
                .elements()
                .filter(|c| c.name == "td" || c.name == "th")
                .map(|c| self.cell(c, style, header || c.name == "th"))
                .collect();
            if cells.iter().any(|c| !c.is_empty()) {
                rows.push(Line::plain(cells.join(" | ")));
            }
            return;
        }
        for child in e.elements() {
            self.table_rows(child, style, header || child.name == "thead", rows);
        }
    }

    fn cell(&self, cell: &Element, style: Style, header: bool) -> String {
        let inner = if header { Style { bold: true, ..style } } else { style };
        let text = self
            .blocks(&cell.children, inner)
            .into_iter()
            .map(|l| l.text)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if header && !style.bold { wrap(&text, '*') } else { text }
    }

    fn inline(&self, e: &Element, style: Style) -> String {
        let (inner, markers) = emphasis(e, style);
        let content = self.inline_content(e, inner);
        markers.iter().fold(content, |text, marker| wrap(&text, *marker))
    }

    fn inline_content(&self, e: &Element, style: Style) -> String {
        if let Some(entity) = self.entity(e)
            && let Some(text) = entity_text(entity, &tidy(&code_text(e)))
        {
            return text;
        }
        match e.name.as_str() {
            "br" => "\n".to_owned(),
            "a" => self.link(e, style),
            "img" => image(e),
            // <chime/> becomes an <audio> element: the only content of its message.
            "audio" => "🔔".to_owned(),
            "code" => {
                let raw = code_text(e);
                if raw.contains('\n') {
                    format!("```{}```", raw.trim_matches('\n'))
                } else if raw.trim().is_empty() {
                    raw
                } else {
                    surround(&raw, &format!("`{}`", raw.trim()))
                }
            }
            _ if self.is_block(e) => format!("\n{}\n", lines_text(self.block(e, style))),
            _ => self.children_inline(&e.children, style),
        }
    }

    fn children_inline(&self, nodes: &[Node], style: Style) -> String {
        nodes
            .iter()
            .map(|node| match node {
                Node::Text(text) => collapse_whitespace(text),
                Node::Element(e) if self.is_block(e) => {
                    format!("\n{}\n", lines_text(self.block(e, style)))
                }
                Node::Element(e) => self.inline(e, style),
            })
            .collect()
    }

    /// `text (url)`, or the bare URL when the text is the URL (or empty).
    fn link(&self, a: &Element, style: Style) -> String {
        let text = self.children_inline(&a.children, style);
        let href = a.attr("href").map(str::trim).unwrap_or_default();
        if href.is_empty() {
            return text;
        }
        let shown = text.trim();
        let written = tidy(&code_text(a));
        if !shown.is_empty() && same_url(&written, href) {
            // The address as written (`https://bücher.de` for `https://xn--bcher-kva.de/`).
            return surround(&text, &written);
        }
        if shown.is_empty() || same_target(&written, href) {
            // An address reads better without its scheme; WhatsApp links it either way.
            let bare =
                href.get(..7).filter(|s| s.eq_ignore_ascii_case("mailto:")).map(|_| &href[7..]);
            surround(&text, bare.unwrap_or(href))
        } else {
            surround(&text, &format!("{shown} ({href})"))
        }
    }

    /// The EntityJSON entry an element stands for (`data-entity-id` naming a key of `data`).
    fn entity(&self, e: &Element) -> Option<&Value> {
        self.entities.get(e.attr("data-entity-id")?)
    }
}

/// The text of an entity: a mention as `@Display Name`, a hashtag or cashtag from its value, an
/// emoji as its unicode (else shortcode); None for entities shown as their content.
fn entity_text(entity: &Value, shown: &str) -> Option<String> {
    if messageml::mention_user(entity).is_some() {
        return match shown {
            "" => None,
            s if s.starts_with('@') => Some(s.to_owned()),
            s => Some(format!("@{s}")),
        };
    }
    let id_value = |id_type: &str| -> Option<String> {
        entity.get("id")?.as_array()?.iter().find_map(|id| {
            if id.get("type").and_then(Value::as_str) != Some(id_type) {
                return None;
            }
            match id.get("value")? {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        })
    };
    match entity.get("type").and_then(Value::as_str)? {
        "org.symphonyoss.taxonomy" => {
            id_value("org.symphonyoss.taxonomy.hashtag").map(|v| format!("#{v}"))
        }
        "org.symphonyoss.fin.security" => {
            id_value("org.symphonyoss.fin.security.id.ticker").map(|v| format!("${v}"))
        }
        "com.symphony.emoji" => {
            let data = entity.get("data");
            let field = |name: &str| {
                data.and_then(|d| d.get(name)).and_then(Value::as_str).filter(|s| !s.is_empty())
            };
            field("unicode")
                .map(str::to_owned)
                .or_else(|| (!shown.is_empty()).then(|| shown.to_owned()))
                .or_else(|| field("shortcode").map(|s| format!(":{s}:")))
        }
        _ => None,
    }
}

/// Bold, italic and strikethrough an element asks for and its surroundings do not already give:
/// the style inside it and the markers to put around it.
fn emphasis(e: &Element, style: Style) -> (Style, Vec<char>) {
    let mut inner = style;
    let mut markers = Vec::new();
    if matches!(e.name.as_str(), "b" | "strong") && !inner.bold {
        inner.bold = true;
        markers.push('*');
    }
    if matches!(e.name.as_str(), "i" | "em") && !inner.italic {
        inner.italic = true;
        markers.push('_');
    }
    // MessageML has no strikethrough tag; a style attribute is the only way to ask for one.
    if e.attr("style").is_some_and(|s| s.to_ascii_lowercase().contains("line-through"))
        && !inner.strike
    {
        inner.strike = true;
        markers.push('~');
    }
    (inner, markers)
}

/// `marker` around each line of `text`, with the line's outer whitespace moved outside the
/// markers (`* bold*` does not render). Blank lines stay as they are.
fn wrap(text: &str, marker: char) -> String {
    text.split('\n')
        .map(|line| {
            let core = line.trim();
            if core.is_empty() {
                line.to_owned()
            } else {
                surround(line, &format!("{marker}{core}{marker}"))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn wrap_lines(lines: Vec<Line>, markers: &[char]) -> Vec<Line> {
    lines
        .into_iter()
        .map(|line| match line.verbatim {
            true => line,
            false => Line::plain(markers.iter().fold(line.text, |t, m| wrap(&t, *m))),
        })
        .collect()
}

fn indent(lines: Vec<Line>, pad: &str) -> Vec<Line> {
    lines
        .into_iter()
        .map(|line| match line.text.is_empty() {
            true => line,
            false => Line { text: format!("{pad}{}", line.text), verbatim: line.verbatim },
        })
        .collect()
}

/// `core` in place of the trimmed content of `original`, keeping its outer whitespace.
fn surround(original: &str, core: &str) -> String {
    let start = original.len() - original.trim_start().len();
    let end = original.trim_end().len().max(start);
    format!("{}{core}{}", &original[..start], &original[end..])
}

/// HTML whitespace: any run (newlines included) shows as one space.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// Single spaces, trimmed.
fn tidy(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Ends the current run of inline content: one line per `<br/>`-separated piece. A run of
/// layout whitespace only is no line; a final `<br/>` ends the last line instead of adding one.
fn flush_run(run: &mut String, lines: &mut Vec<Line>) {
    let text = std::mem::take(run);
    if !text.chars().any(|c| c == '\n' || !c.is_whitespace()) {
        return;
    }
    let body = text.strip_suffix('\n').unwrap_or(&text);
    lines.extend(body.split('\n').map(|piece| Line::plain(tidy(piece))));
}

/// The raw text inside an element (code keeps its whitespace); `<br/>` as a newline.
fn code_text(e: &Element) -> String {
    let mut out = String::new();
    for node in &e.children {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Element(child) if child.name == "br" => out.push('\n'),
            Node::Element(child) => out.push_str(&code_text(child)),
        }
    }
    out
}

fn image(img: &Element) -> String {
    match (img.attr("alt").map(str::trim), img.attr("src").map(str::trim)) {
        (Some(alt), _) if !alt.is_empty() => alt.to_owned(),
        // An inline data URI is no use as text.
        (_, Some(src)) if src.starts_with("data:") => "[image]".to_owned(),
        (_, Some(src)) => src.to_owned(),
        _ => String::new(),
    }
}

/// Whether a link's text already says where it goes (`https://x.org` for `https://x.org/`, an
/// address for its `mailto:`).
fn same_target(shown: &str, href: &str) -> bool {
    let bare = |s: &str| {
        let lower = s.to_lowercase();
        let rest = ["mailto:", "https://", "http://"]
            .iter()
            .find_map(|p| lower.strip_prefix(p).map(str::to_owned))
            .unwrap_or(lower);
        rest.trim_end_matches('/').to_owned()
    };
    bare(shown) == bare(href)
}

/// Whether a link's text is an http(s) address that normalises to its `href`.
fn same_url(shown: &str, href: &str) -> bool {
    let parse =
        |s: &str| url::Url::parse(s).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
    parse(shown).is_some_and(|a| parse(href).is_some_and(|b| a == b))
}

fn lines_text(lines: Vec<Line>) -> String {
    lines.into_iter().map(|l| l.text).collect::<Vec<_>>().join("\n")
}

/// The final text: trailing spaces dropped, runs of blank lines collapsed to one, trimmed.
fn join_lines(lines: Vec<Line>) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in lines {
        let text = if line.verbatim { line.text } else { line.text.trim_end().to_owned() };
        if text.is_empty() && out.last().is_none_or(|last| last.is_empty()) {
            continue;
        }
        out.push(text);
    }
    out.join("\n").trim().to_owned()
}

// ---------------------------------------------------------------------------------------------
// WhatsApp text → MessageML fragment
// ---------------------------------------------------------------------------------------------

/// A contact's WhatsApp text as a MessageML fragment (no `<messageML>` wrapper) safe to put in a
/// message the bot posts: every character escaped (FreeMarker's `$` and `#` too), WhatsApp's
/// `*bold*`, `_italic_`, `` `code` `` and ```` ```block``` ```` as `<b>`, `<i>`, `<code>` and
/// `<pre>`, http(s) URLs as links, newlines as `<br/>`. `~strike~` keeps its tildes: MessageML
/// has no strikethrough tag (messageml-utils' element set; the documented text tags).
pub fn to_message_ml(text: &str) -> String {
    // Characters XML 1.0 cannot carry even escaped would make the agent refuse the message.
    let text: String = text
        .chars()
        .filter(|&c| c == '\t' || c == '\n' || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}'))
        .collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text.as_str();
    while let Some((before, code, after)) = split_code_block(rest) {
        // <pre> is a block: the newlines around it would add blank lines.
        push_lines(before.strip_suffix('\n').unwrap_or(before), &mut out);
        out.push_str("<pre>");
        out.push_str(&escape_message_ml(code));
        out.push_str("</pre>");
        rest = after.strip_prefix('\n').unwrap_or(after);
    }
    push_lines(rest, &mut out);
    out
}

/// The first ```` ```code``` ```` with some non-space content: (text before, code, text after).
fn split_code_block(text: &str) -> Option<(&str, &str, &str)> {
    let mut from = 0;
    while let Some(open) = text[from..].find("```").map(|p| p + from) {
        let body_start = open + 3;
        let close = text[body_start..].find("```").map(|p| p + body_start)?;
        let body = &text[body_start..close];
        if !body.trim().is_empty() {
            return Some((&text[..open], body, &text[close + 3..]));
        }
        from = body_start;
    }
    None
}

fn push_lines(text: &str, out: &mut String) {
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str("<br/>");
        }
        let chars: Vec<char> = line.chars().collect();
        let urls = find_urls(&chars);
        let closers = Closers::new(&chars, &urls);
        InlineLine { chars: &chars, urls: &urls, closers }.render(0, chars.len(), out);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Bold,
    Italic,
    Code,
}

impl Marker {
    fn of(c: char) -> Option<Self> {
        match c {
            '*' => Some(Self::Bold),
            '_' => Some(Self::Italic),
            '`' => Some(Self::Code),
            _ => None,
        }
    }
}

/// Where each marker may close on a line: after a non-space, before a word boundary, outside
/// URLs. Sorted, so an opener finds its closer by binary search.
struct Closers {
    bold: Vec<usize>,
    italic: Vec<usize>,
    code: Vec<usize>,
}

impl Closers {
    fn new(chars: &[char], urls: &[(usize, usize)]) -> Self {
        let mut closers = Self { bold: Vec::new(), italic: Vec::new(), code: Vec::new() };
        for (j, &c) in chars.iter().enumerate() {
            let Some(marker) = Marker::of(c) else { continue };
            let after_text = j > 0 && against_text(marker, chars[j - 1]);
            let at_boundary = chars.get(j + 1).is_none_or(|n| !n.is_alphanumeric());
            if after_text && at_boundary && url_containing(urls, j).is_none() {
                closers.positions_mut(marker).push(j);
            }
        }
        closers
    }

    fn positions_mut(&mut self, marker: Marker) -> &mut Vec<usize> {
        match marker {
            Marker::Bold => &mut self.bold,
            Marker::Italic => &mut self.italic,
            Marker::Code => &mut self.code,
        }
    }

    /// The first closer strictly after `after` and before `end`.
    fn first(&self, marker: Marker, after: usize, end: usize) -> Option<usize> {
        let positions = match marker {
            Marker::Bold => &self.bold,
            Marker::Italic => &self.italic,
            Marker::Code => &self.code,
        };
        let i = positions.partition_point(|&p| p <= after);
        positions.get(i).copied().filter(|&p| p < end)
    }
}

struct InlineLine<'a> {
    chars: &'a [char],
    urls: &'a [(usize, usize)],
    closers: Closers,
}

impl InlineLine<'_> {
    fn render(&self, start: usize, end: usize, out: &mut String) {
        let mut literal = String::new();
        let mut i = start;
        while i < end {
            if let Ok(k) = self.urls.binary_search_by_key(&i, |&(s, _)| s)
                && let url_end = self.urls[k].1
                && url_end <= end
            {
                out.push_str(&escape_message_ml(&std::mem::take(&mut literal)));
                let url: String = self.chars[i..url_end].iter().collect();
                let target = href(&url);
                if target == url {
                    out.push_str(&format!("<a href=\"{}\"/>", escape_message_ml(&target)));
                } else {
                    // Normalised to be a legal href (an IDN host, spaces, invisible characters):
                    // the room still shows the address as the contact wrote it.
                    out.push_str(&format!(
                        "<a href=\"{}\">{}</a>",
                        escape_message_ml(&target),
                        escape_message_ml(&url)
                    ));
                }
                i = url_end;
                continue;
            }
            let c = self.chars[i];
            if let Some(marker) = Marker::of(c)
                && self.opens(i)
                && let Some(close) = self.closers.first(marker, i + 1, end)
            {
                out.push_str(&escape_message_ml(&std::mem::take(&mut literal)));
                match marker {
                    Marker::Code => {
                        let code: String = self.chars[i + 1..close].iter().collect();
                        out.push_str(&format!("<code>{}</code>", escape_message_ml(&code)));
                    }
                    Marker::Bold | Marker::Italic => {
                        let tag = if marker == Marker::Bold { "b" } else { "i" };
                        out.push_str(&format!("<{tag}>"));
                        self.render(i + 1, close, out);
                        out.push_str(&format!("</{tag}>"));
                    }
                }
                i = close + 1;
                continue;
            }
            literal.push(c);
            i += 1;
        }
        out.push_str(&escape_message_ml(&literal));
    }

    /// A marker opens after a word boundary and before a non-space (`2*3*4`, `snake_case` and a
    /// lone `*` do not).
    fn opens(&self, i: usize) -> bool {
        let after_boundary = i == 0 || !self.chars[i - 1].is_alphanumeric();
        let before_text = match (Marker::of(self.chars[i]), self.chars.get(i + 1)) {
            (Some(marker), Some(&next)) => against_text(marker, next),
            _ => false,
        };
        after_boundary && before_text && url_containing(self.urls, i).is_none()
    }
}

/// Whether a marker touches text on that side: not a space, nor (for a backtick) another
/// backtick, since a run of backticks is a fence rather than inline code.
fn against_text(marker: Marker, neighbour: char) -> bool {
    !(neighbour.is_whitespace() || (marker == Marker::Code && neighbour == '`'))
}

fn url_containing(urls: &[(usize, usize)], i: usize) -> Option<(usize, usize)> {
    let after = urls.partition_point(|&(start, _)| start <= i);
    after.checked_sub(1).map(|k| urls[k]).filter(|&(_, end)| i < end)
}

/// The http(s) URLs of a line, as char ranges: from the scheme to the next space, less the
/// sentence punctuation and markers that follow it.
fn find_urls(chars: &[char]) -> Vec<(usize, usize)> {
    let mut urls = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if (i == 0 || !chars[i - 1].is_alphanumeric())
            && let Some(end) = url_end(chars, i)
        {
            urls.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    urls
}

fn url_end(chars: &[char], start: usize) -> Option<usize> {
    let starts_with = |prefix: &str| {
        let n = prefix.chars().count();
        chars.len() >= start + n
            && chars[start..start + n]
                .iter()
                .zip(prefix.chars())
                .all(|(a, b)| a.eq_ignore_ascii_case(&b))
    };
    let scheme = if starts_with("https://") {
        8
    } else if starts_with("http://") {
        7
    } else {
        return None;
    };
    let min = start + scheme;
    let mut end = min;
    while end < chars.len() && !chars[end].is_whitespace() && !matches!(chars[end], '<' | '>' | '"')
    {
        end += 1;
    }
    while end > min {
        let count = |c: char| chars[start..end].iter().filter(|&&x| x == c).count();
        match chars[end - 1] {
            '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '*' | '_' | '~' | '`' => end -= 1,
            // A closing parenthesis belongs to the URL only if the URL opened one.
            ')' if count('(') < count(')') => end -= 1,
            _ => break,
        }
    }
    let text: String = chars[start..end].iter().collect();
    let parsed = url::Url::parse(&text).ok()?;
    parsed.host_str().filter(|h| !h.is_empty())?;
    Some(end)
}

/// A URL as an `href` the agent accepts: as written when every character is legal in a URI,
/// else percent-encoded.
fn href(url: &str) -> String {
    let uri_char = |c: char| c.is_ascii_alphanumeric() || "-._~:/?#@!$&'()*+,;=%".contains(c);
    if url.chars().all(uri_char) {
        return url.to_owned();
    }
    url::Url::parse(url).map(|u| u.to_string()).unwrap_or_else(|_| url.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Quote snippets
// ---------------------------------------------------------------------------------------------

pub use crate::markup::quote_snippet;

#[cfg(test)]
mod tests {
    use super::*;

    /// A message body as the agent wraps it.
    fn pml(body: &str) -> String {
        format!("<div data-format=\"PresentationML\" data-version=\"2.0\">{body}</div>")
    }

    /// A message typed in the Symphony client (`class="wysiwyg"`, text in `<p>`).
    fn typed(body: &str) -> String {
        format!(
            "<div data-format=\"PresentationML\" data-version=\"2.0\" class=\"wysiwyg\">{body}</div>"
        )
    }

    const MENTION_BOT_USER: &str = r#"{"mention1":{"type":"com.symphony.user.mention","version":"1.0","id":[{"type":"com.symphony.user.userId","value":"1"}]}}"#;

    fn check(cases: &[(&str, String, Option<&str>, &str)]) {
        for (name, input, data, expected) in cases {
            let got = to_whatsapp(input, *data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, *expected, "{name}: {input}");
        }
    }

    #[test]
    fn inline_formatting_becomes_whatsapp_markers() {
        check(&[
            ("plain", pml("Hello world!"), None, "Hello world!"),
            // messageml-utils BoldTest / ItalicTest PresentationML.
            ("bold", pml("<b>Hello world!</b>"), None, "*Hello world!*"),
            ("italic", pml("<i>Hello</i> world"), None, "_Hello_ world"),
            ("strong and em", pml("<strong>a</strong> <em>b</em>"), None, "*a* _b_"),
            ("bold in italic", pml("<i>a <b>b</b> c</i>"), None, "_a *b* c_"),
            ("italic in bold", pml("<b><i>x</i></b>"), None, "*_x_*"),
            ("bold in bold is bold once", pml("<b>a <b>b</b> c</b>"), None, "*a b c*"),
            ("spaces move outside markers", pml("say<b> hi </b>there"), None, "say *hi* there"),
            ("italic with spaces", pml("<i>  lean </i>"), None, "_lean_"),
            ("whitespace-only bold has no markers", pml("a<b> </b>b"), None, "a b"),
            ("empty bold", pml("a<b></b>b"), None, "ab"),
            ("bold across a line break", pml("<b>one<br/>two</b>"), None, "*one*\n*two*"),
            (
                "strikethrough by style",
                pml("<span style=\"text-decoration: line-through\">gone</span> kept"),
                None,
                "~gone~ kept",
            ),
            (
                "strike, bold and italic together",
                pml("<b style=\"text-decoration:line-through\"><i>all</i></b>"),
                None,
                "~*_all_*~",
            ),
            (
                "class colours are ignored",
                pml("<b class=\"tempo-text-color--red\">red</b>"),
                None,
                "*red*",
            ),
            ("sub and superscript as text", pml("H<sub>2</sub>O x<sup>2</sup>"), None, "H2O x2"),
        ]);
    }

    #[test]
    fn entities_and_whitespace_are_decoded() {
        check(&[
            (
                "xml entities",
                pml("x &amp; y &lt;z&gt; &quot;q&quot; &apos;s&apos;"),
                None,
                "x & y <z> \"q\" 's'",
            ),
            ("character references", pml("&#36;{x} &#35;{y} &#x1F600;"), None, "${x} #{y} 😀"),
            // finos/symphony-bdk-java#544: the agent lets `&nbsp;` through.
            ("nbsp", pml("a&nbsp;b&nbsp;&nbsp;c"), None, "a b c"),
            ("nbsp alone", pml("&nbsp;"), None, ""),
            ("an unknown entity is kept", pml("&copy; 2025"), None, "&copy; 2025"),
            ("cdata", pml("<![CDATA[<b>x</b> & y]]>"), None, "<b>x</b> & y"),
            ("layout whitespace collapses", pml("\n  one\n   two  \n"), None, "one two"),
            ("comments are dropped", pml("a<!-- note -->b"), None, "ab"),
            ("empty message", pml(""), None, ""),
            (
                "single-quoted attributes",
                "<div data-format='PresentationML' data-version='2.0'>hi</div>".into(),
                None,
                "hi",
            ),
        ]);
    }

    #[test]
    fn blocks_become_lines() {
        check(&[
            // Client-typed messages wrap each line in <p> (symphony-api.md §7.2).
            ("paragraphs", typed("<p>one</p><p>two</p>"), None, "one\ntwo"),
            ("an empty paragraph is a blank line", typed("<p>a</p><p><br/></p><p>b</p>"), None, "a\n\nb"),
            ("line breaks", pml("one<br/>two"), None, "one\ntwo"),
            (
                "runs of blank lines collapse",
                pml("one<br/><br/><br/><br/><br/>two"),
                None,
                "one\n\ntwo",
            ),
            ("a final br adds nothing", typed("<p>a<br/></p><p>b</p>"), None, "a\nb"),
            ("leading and trailing blanks are trimmed", pml("<br/><br/> x <br/><br/>"), None, "x"),
            ("divs", pml("<div>a</div>b<div>c</div>"), None, "a\nb\nc"),
            // messageml-utils HeaderTest: <h1>…<h6> pass through.
            ("heading", pml("<h1>Title</h1>text"), None, "*Title*\ntext"),
            ("heading level 6", pml("<h6>Small</h6>"), None, "*Small*"),
            ("bold inside a heading", pml("<h2>a <b>b</b></h2>"), None, "*a b*"),
            (
                "heading with a mention",
                pml("<h1>Hello <span class=\"entity\" data-entity-id=\"mention1\">@Bot User01</span>!</h1>"),
                Some(MENTION_BOT_USER),
                "*Hello @Bot User01!*",
            ),
            // messageml-utils HorizontalRuleTest.
            ("horizontal rule", pml("Hello<hr/>world!"), None, "Hello\n---\nworld!"),
            // messageml-utils ChimeTest: <chime/> as the agent renders it.
            (
                "chime",
                pml("<audio src=\"https://asset.symphony.com/symphony/audio/chime.mp3\" autoplay=\"true\"/>"),
                None,
                "🔔",
            ),
            // messageml-utils DateTimeTest (pretty-printed input keeps its spaces).
            (
                "date times",
                "<div data-format=\"PresentationML\" data-version=\"2.0\"> <time data-entity-id=\"datetime1\" datetime=\"2024-12-31T09:29:47Z\" data-format=\"date\">2024-12-31T09:29:47Z</time> <time data-entity-id=\"datetime2\" datetime=\"2025-12-31T09:29:47Z\">2025-12-31T09:29:47Z</time> </div>".into(),
                None,
                "2024-12-31T09:29:47Z 2025-12-31T09:29:47Z",
            ),
        ]);
    }

    #[test]
    fn links_mentions_tags_emoji_and_images() {
        let tags = r#"{"keyword1":{"type":"org.symphonyoss.taxonomy","version":"1.0","id":[{"type":"org.symphonyoss.taxonomy.hashtag","value":"world"}]},"keyword2":{"type":"org.symphonyoss.fin.security","version":"1.0","id":[{"type":"org.symphonyoss.fin.security.id.ticker","value":"IBM"}]}}"#;
        let emoji = r#"{"emoji1":{"type":"com.symphony.emoji","version":"1.0","data":{"shortcode":"smiley","annotation":"smiley","size":"normal","unicode":"😃"}},"emoji2":{"type":"com.symphony.emoji","version":"1.0","data":{"shortcode":"notfoundemoji","annotation":"notfoundemoji","size":"normal"}}}"#;
        // messageml-utils TagTest: <tag> renders as a cashtag span with a richer id list.
        let tag = r#"{"tag1":{"type":"org.symphonyoss.fin.security","version":"2.0","id":[{"type":"org.symphonyoss.fin.security.id.ticker","value":"000930"},{"type":"org.symphonyoss.fin.security.id.isin","value":"CNE000000ZR7"}]}}"#;
        // Symphony docs, bots/datafeed/real-time-events (MESSAGESENT sample): single quotes,
        // cashTag/hashTag classes, a numeric user id, newlines inside `data`.
        let docs_data = "{\n\"mention1\": {\n\"type\": \"com.symphony.user.mention\",\n\"version\": \"1.0\",\n\"id\": [{\n\"type\": \"com.symphony.user.userId\",\n\"value\": 123456789\n}]\n},\n\"cashtag2\": {\n\"type\": \"org.symphonyoss.fin.security\",\n\"version\": \"1.0\",\n\"id\": [{\n\"type\": \"org.symphonyoss.fin.security.id.ticker\",\n\"value\": \"ibm\"\n}]\n},\n\"hashtag3\": {\n\"type\": \"org.symphonyoss.taxonomy\",\n\"version\": \"1.0\",\n\"id\": [{\n\"type\": \"org.symphonyoss.taxonomy.hashtag\",\n\"value\": \"unexpected\"\n}]\n}\n}";
        // tests/fixtures/symphony/datafeed-read.json (BDK-python sample, symphony-api.md §4.2).
        let fixture_pml = "<div data-format=\"PresentationML\" data-version=\"2.0\" class=\"wysiwyg\"><p><span class=\"entity\" data-entity-id=\"0\">@Group Bot</span> /group add <span class=\"entity\" data-entity-id=\"1\">@Bob Smith</span></p></div>";
        let fixture_data = r#"{"0":{"id":[{"type":"com.symphony.user.userId","value":"349026222344902"}],"type":"com.symphony.user.mention"},"1":{"id":[{"type":"com.symphony.user.userId","value":"349026222339001"}],"type":"com.symphony.user.mention"}}"#;
        check(&[
            // messageml-utils LinkTest.
            ("link with text", pml("<a href=\"https://hello.org\">Hello world!</a>"), None, "Hello world! (https://hello.org)"),
            ("link showing its url", pml("<a href=\"https://hello.org\">https://hello.org</a>"), None, "https://hello.org"),
            ("link without scheme or slash", pml("see <a href=\"https://hello.org/\">hello.org</a>."), None, "see https://hello.org/."),
            ("empty link", pml("<a href=\"https://hello.org\"/>"), None, "https://hello.org"),
            ("bold link", pml("<b><a href=\"https://x.org\">X</a></b>"), None, "*X (https://x.org)*"),
            ("link spaces stay outside", pml("go<a href=\"https://x.org\"> here </a>now"), None, "go here (https://x.org) now"),
            ("query string entities", pml("<a href=\"https://x.org/?a=1&amp;b=2\">q</a>"), None, "q (https://x.org/?a=1&b=2)"),
            // messageml-utils MentionTest: a soft mention of an unknown address.
            ("soft mention", pml("Hello <a href=\"mailto:invalid@email.com\">invalid@email.com</a>!"), None, "Hello invalid@email.com!"),
            ("client mentions", fixture_pml.to_owned(), Some(fixture_data), "@Group Bot /group add @Bob Smith"),
            (
                "mention by PresentationML div stays inline",
                pml("Hello <div class=\"entity\" data-entity-id=\"mention1\">@Bot User01</div>!"),
                Some(MENTION_BOT_USER),
                "Hello @Bot User01!",
            ),
            (
                "mention without its @",
                pml("<span class=\"entity\" data-entity-id=\"mention1\">Bot User01</span>"),
                Some(MENTION_BOT_USER),
                "@Bot User01",
            ),
            (
                "an entity missing from data is its text",
                pml("<span class=\"entity\" data-entity-id=\"ghost\">@Ghost</span>"),
                Some(MENTION_BOT_USER),
                "@Ghost",
            ),
            // messageml-utils HashtagTest / CashtagTest.
            (
                "hashtag and cashtag",
                pml("Hello <span class=\"entity\" data-entity-id=\"keyword1\">#world</span> <span class=\"entity\" data-entity-id=\"keyword2\">$IBM</span>!"),
                Some(tags),
                "Hello #world $IBM!",
            ),
            (
                "hashtag by PresentationML div without its #",
                pml("Hello <div class=\"entity\" data-entity-id=\"keyword1\">world</div>!"),
                Some(tags),
                "Hello #world!",
            ),
            (
                "docs real-time event sample",
                "<div data-format='PresentationML' data-version='2.0'>Message content. With <span class='entity' data-entity-id='mention1'>@user name</span>, <span class='cashTag' data-entity-id='cashtag2'>$ticker</span>, and <span class='hashTag' data-entity-id='hashtag3'>#keyword</span>.</div>".into(),
                Some(docs_data),
                "Message content. With @user name, $ibm, and #unexpected.",
            ),
            ("financial tag", pml("<span class=\"entity\" data-entity-id=\"tag1\">$000930</span>"), Some(tag), "$000930"),
            // messageml-utils EmojiTest: the span holds fallback content, data the unicode.
            (
                "emoji with unicode",
                pml("ok <span class=\"entity\" data-entity-id=\"emoji1\"><b>Test of content</b></span>"),
                Some(emoji),
                "ok 😃",
            ),
            ("emoji without unicode", pml("<span class=\"entity\" data-entity-id=\"emoji2\"></span>"), Some(emoji), ":notfoundemoji:"),
            ("emoji without unicode keeps its text", pml("<span class=\"entity\" data-entity-id=\"emoji2\">:x:</span>"), Some(emoji), ":x:"),
            // messageml-utils ImageTest.
            ("image", pml("Hello <img src=\"hello.png\"/> world!"), None, "Hello hello.png world!"),
            ("image alt", pml("<img src=\"https://x.org/a.png\" alt=\"a chart\"/>"), None, "a chart"),
            ("inline image data", pml("<img src=\"data:image/svg+xml;base64,PHN2ZyBpZD0i\"/>"), None, "[image]"),
            ("blank data is no entities", pml("plain"), Some("  "), "plain"),
        ]);
    }

    #[test]
    fn lists_tables_cards_and_code() {
        check(&[
            // messageml-utils BulletListTest / OrderedListTest.
            ("bullets", pml("<ul><li>one</li><li>two</li></ul>"), None, "- one\n- two"),
            ("numbers", pml("<ol><li>a</li><li>b</li></ol>"), None, "1. a\n2. b"),
            (
                "numbers from start",
                pml("<ol start=\"9\"><li>a</li><li>b</li></ol>"),
                None,
                "9. a\n10. b",
            ),
            (
                "nested lists",
                pml(
                    "<ul><li>a<ul><li>b</li><li>c<ol><li>d</li></ol></li></ul></li><li>e</li></ul>",
                ),
                None,
                "- a\n  - b\n  - c\n    1. d\n- e",
            ),
            ("list between text", pml("Intro<ul><li>a</li></ul>after"), None, "Intro\n- a\nafter"),
            (
                "paragraphs in items",
                typed("<ul><li><p>one</p></li><li><p><b>two</b></p></li></ul>"),
                None,
                "- one\n- *two*",
            ),
            ("item with two lines", pml("<ol><li>a<br/>b</li></ol>"), None, "1. a\n   b"),
            (
                "layout whitespace in lists",
                pml("<ul>\n  <li>a</li>\n  <li>b</li>\n</ul>"),
                None,
                "- a\n- b",
            ),
            // messageml-utils TableTest.
            (
                "table with head, body and foot",
                pml(
                    "<table><thead><tr><th>It</th><th>was</th></tr></thead><tbody><tr><td colspan=\"6\" rowspan=\"7\">the</td><td>best</td></tr></tbody><tfoot><tr><th>of</th><td>times</td></tr></tfoot></table>",
                ),
                None,
                "*It* | *was*\nthe | best\n*of* | times",
            ),
            (
                "table without sections",
                pml(
                    "<table><tr><td>A1</td><td>B1</td></tr><tr><td>A2</td><td>B2</td></tr></table>",
                ),
                None,
                "A1 | B1\nA2 | B2",
            ),
            // A table pasted in the client (symphony-spring-boot-starter TestSimpleMessageParser).
            (
                "pasted table",
                typed(
                    "<p><table class=\"pasted-table\"><thead><tr><th>Name</th><th>Age</th><th>Alive</th></tr></thead><tbody><tr><td>Jim</td><td>5</td><td>FALSE</td></tr></tbody></table></p>",
                ),
                None,
                "*Name* | *Age* | *Alive*\nJim | 5 | FALSE",
            ),
            (
                "bold header cell is bold once",
                pml("<table><tr><th><b>H</b></th><td><i>x</i></td></tr></table>"),
                None,
                "*H* | _x_",
            ),
            (
                "empty cells",
                pml("<table><tr><td></td><td>b</td></tr><tr><td></td></tr></table>"),
                None,
                "| b",
            ),
            // messageml-utils CardTest / ExpandableCardTest.
            (
                "card",
                pml(
                    "<div class=\"card label\" data-icon-src=\"icon.png\" data-accent-color=\"mauve\"><div class=\"cardHeader\">Hello</div><div class=\"cardBody\">world!</div></div>",
                ),
                None,
                "*Hello*\nworld!",
            ),
            (
                "expandable card",
                pml(
                    "<div class=\"expandable-card\" data-state=\"collapsed\"><div class=\"expandableCardHeader\">Hello</div><div class=\"expandableCardBody\" data-variant=\"default\">world! <b>more</b></div></div>",
                ),
                None,
                "*Hello*\nworld! *more*",
            ),
            // messageml-utils CodeTest / CodeLanguageTest.
            (
                "one-line code",
                pml("<code>System.out.println(&quot;Hello world!&quot;);</code>"),
                None,
                "`System.out.println(\"Hello world!\");`",
            ),
            (
                "code keeps markdown-looking text",
                pml("<code>_Hello_ **world!**</code>"),
                None,
                "`_Hello_ **world!**`",
            ),
            (
                "code drops inner tags",
                pml("<code><i>Hello</i> <b>world!</b></code>"),
                None,
                "`Hello world!`",
            ),
            (
                "code with language",
                pml("<code data-language=\"python\">print(1)</code>"),
                None,
                "`print(1)`",
            ),
            (
                "code in a sentence",
                typed("<p>run <code>ls -la</code> now</p>"),
                None,
                "run `ls -la` now",
            ),
            ("multi-line code", pml("<code>\nfoo\n\nbar\n</code>"), None, "```foo\n\nbar```"),
            (
                "preformatted keeps indentation",
                pml("before<pre>fn main() {\n    run();\n}</pre>after"),
                None,
                "before\n```fn main() {\n    run();\n}```\nafter",
            ),
            (
                "pre inside code",
                pml("<code data-language=\"plaintext\"><pre>Hello</pre></code>"),
                None,
                "`Hello`",
            ),
            (
                "code block in a list",
                pml("<ul><li>see<pre>a\n  b</pre></li></ul>"),
                None,
                "- see\n  ```a\n  b```",
            ),
            ("empty code", pml("a<code></code>b<pre>\n</pre>"), None, "ab"),
        ]);
    }

    #[test]
    fn hostile_presentation_ml_is_text_not_markup() {
        let long_body = "word ".repeat(20_000);
        let long = to_whatsapp(&pml(&long_body), None).expect("long message");
        assert_eq!(long.len(), long_body.trim_end().len());
        check(&[
            (
                "escaped script",
                pml("&lt;script&gt;alert(1)&lt;/script&gt;"),
                None,
                "<script>alert(1)</script>",
            ),
            ("cdata end", pml("]]&gt; &amp;&amp;"), None, "]]> &&"),
            ("freemarker", pml("${x} #{x}"), None, "${x} #{x}"),
            ("rtl", pml("שלום <b>עולם</b>"), None, "שלום *עולם*"),
            ("emoji text", pml("👍🏽 <i>ok</i> 👨‍👩‍👧"), None, "👍🏽 _ok_ 👨‍👩‍👧"),
            (
                "unknown elements show their text",
                pml("<form id=\"f\"><button name=\"b\">Send</button></form>"),
                None,
                "Send",
            ),
            (
                "literal markers pass through",
                pml("2*3*4 and snake_case"),
                None,
                "2*3*4 and snake_case",
            ),
        ]);
    }

    #[test]
    fn unreadable_presentation_ml_is_refused() {
        let deep = format!("{}x{}", "<b>".repeat(MAX_DEPTH + 1), "</b>".repeat(MAX_DEPTH + 1));
        let cases: &[(&str, String, Option<&str>)] = &[
            ("unclosed", "<div><p>x</div>".into(), None),
            ("never closed", "<div>x".into(), None),
            ("stray end", "x</b>".into(), None),
            ("mismatched", "<div><b>x</i></div>".into(), None),
            ("bad character reference", pml("&#0;"), None),
            ("data not json", pml("x"), Some("not json")),
            ("too deep", pml(&deep), None),
        ];
        for (name, input, data) in cases {
            let err = to_whatsapp(input, *data).expect_err(name);
            assert!(!err.to_string().is_empty(), "{name}");
        }
        let just_deep_enough =
            format!("{}x{}", "<i>".repeat(MAX_DEPTH - 2), "</i>".repeat(MAX_DEPTH - 2));
        assert_eq!(to_whatsapp(&pml(&just_deep_enough), None).expect("deep but allowed"), "_x_");
    }

    #[test]
    fn whatsapp_markers_become_messageml() {
        let cases: &[(&str, &str, &str)] = &[
            ("plain", "hello there", "hello there"),
            ("bold", "*bold*", "<b>bold</b>"),
            ("italic", "_it_", "<i>it</i>"),
            ("inline code", "run `ls -la` now", "run <code>ls -la</code> now"),
            ("code keeps markers", "`*not bold*`", "<code>*not bold*</code>"),
            ("strikethrough keeps its tildes", "~gone~", "~gone~"),
            ("nested", "*bold _and italic_*", "<b>bold <i>and italic</i></b>"),
            ("inside punctuation", "(*yes*), _sure_!", "(<b>yes</b>), <i>sure</i>!"),
            ("after another marker", "~*both*~", "~<b>both</b>~"),
            ("several", "*a* and *b*", "<b>a</b> and <b>b</b>"),
            ("multiplication", "2*3*4", "2*3*4"),
            ("snake case", "snake_case_name", "snake_case_name"),
            ("lone star", "*", "*"),
            ("spaced stars", "a * b * c", "a * b * c"),
            ("space after opener", "* not bold*", "* not bold*"),
            ("space before closer", "*not bold *", "*not bold *"),
            ("word after closer", "*bold*er", "*bold*er"),
            ("word before opener", "x*bold*", "x*bold*"),
            ("empty markers", "** __", "** __"),
            ("unclosed", "*open", "*open"),
            ("a marker does not cross lines", "*a\nb*", "*a<br/>b*"),
            ("one per line", "*a*\n_b_", "<b>a</b><br/><i>b</i>"),
            ("newlines", "one\ntwo\n\nthree", "one<br/>two<br/><br/>three"),
            ("windows newlines", "one\r\ntwo", "one<br/>two"),
            ("code block", "```let x = 1;\nlet y = 2;```", "<pre>let x = 1;\nlet y = 2;</pre>"),
            ("code block between lines", "before\n```code```\nafter", "before<pre>code</pre>after"),
            (
                "code block keeps markers and escapes",
                "```*a* <b> & ${x}```",
                "<pre>*a* &lt;b&gt; &amp; &#36;{x}</pre>",
            ),
            ("empty code block", "``` ```", "``` ```"),
            ("url", "see https://example.com/path", "see <a href=\"https://example.com/path\"/>"),
            (
                "url with underscores, query and full stop",
                "go to https://example.com/a_b_c?x=1&y=2.",
                "go to <a href=\"https://example.com/a_b_c?x=1&amp;y=2\"/>.",
            ),
            ("url fragment", "https://x.org/#top", "<a href=\"https://x.org/&#35;top\"/>"),
            (
                "url with parentheses",
                "(https://en.wikipedia.org/wiki/Rust_(programming_language))",
                "(<a href=\"https://en.wikipedia.org/wiki/Rust_(programming_language)\"/>)",
            ),
            ("bold url", "*https://a.com*", "<b><a href=\"https://a.com\"/></b>"),
            ("http and case", "HTTP://A.COM/x", "<a href=\"HTTP://A.COM/x\"/>"),
            (
                "non-ascii url, shown as written",
                "https://example.com/ü",
                "<a href=\"https://example.com/%C3%BC\">https://example.com/ü</a>",
            ),
            ("scheme only", "http:// and https://", "http:// and https://"),
            ("not a url scheme", "ftp://x.org myhttps://x.org", "ftp://x.org myhttps://x.org"),
            (
                "script",
                "<script>alert('x')</script>",
                "&lt;script&gt;alert(&apos;x&apos;)&lt;/script&gt;",
            ),
            ("ampersand and quotes", "a & \"b\"", "a &amp; &quot;b&quot;"),
            ("cdata end", "]]>", "]]&gt;"),
            ("freemarker", "${x} #{x}", "&#36;{x} &#35;{x}"),
            ("freemarker in bold", "*${x}*", "<b>&#36;{x}</b>"),
            ("control characters", "a\u{0}b\u{1b}c\u{7}d\u{FFFF}", "abcd"),
            ("tab kept", "a\tb", "a\tb"),
            ("emoji", "👍🏽 *ok* 👨‍👩‍👧", "👍🏽 <b>ok</b> 👨‍👩‍👧"),
            ("rtl", "*שלום* עולם", "<b>שלום</b> עולם"),
            ("accented words", "é*x*", "é*x*"),
            ("empty", "", ""),
        ];
        for (name, input, expected) in cases {
            assert_eq!(to_message_ml(input), *expected, "{name}: {input:?}");
        }
    }

    /// Every fragment is well-formed MessageML: it parses as XML inside <messageML>, and the mock
    /// pod (which renders MessageML the way the agent does) accepts it.
    #[test]
    fn message_ml_fragments_always_parse() {
        let long = "*bold* _it_ `c` https://x.org/a_b 2*3 <&> ${x} 👍 ".repeat(2_000);
        let hostile = [
            "<script>alert(1)</script>",
            "]]><![CDATA[",
            "<!-- -->",
            "&amp; &#0; &lt;",
            "${x} #{x} <#if true>x</#if>",
            "*_`~```",
            "``` <b> ```",
            "```unclosed <b>",
            "*<b>*",
            "https://x.org/\"><script>",
            "https://x.org/?q=<b>&r='1'",
            "\u{0}\u{1}\u{8}\u{b}\u{c}\u{e}\u{1f}\u{7f}\u{FFFE}",
            "עברית *מודגש* and English",
            long.as_str(),
        ];
        for input in hostile {
            let fragment = to_message_ml(input);
            let message = format!("<messageML>{fragment}</messageML>");
            let mut reader = Reader::from_str(&message);
            let mut depth = 0i64;
            loop {
                match reader.read_event() {
                    Ok(Event::Eof) => break,
                    Ok(Event::Start(_)) => depth += 1,
                    Ok(Event::End(_)) => depth -= 1,
                    Ok(_) => {}
                    Err(e) => panic!("{input:?} gave unreadable MessageML {message:?}: {e}"),
                }
            }
            assert_eq!(depth, 0, "{input:?}");
            assert!(!fragment.contains("${") && !fragment.contains("#{"), "{fragment}");
            crate::sandbox::mock_pod::render_message_ml(&message, None, &|_| None)
                .unwrap_or_else(|e| panic!("mock pod refused {message:?}: {e}"));
        }
    }

    /// WhatsApp text → MessageML → (the agent) → PresentationML → WhatsApp text keeps its meaning.
    #[test]
    fn formatting_survives_a_round_trip() {
        let cases: &[(&str, &str)] = &[
            ("Hello *bold* and _italic_ and `code`", "Hello *bold* and _italic_ and `code`"),
            ("*bold _both_*", "*bold _both_*"),
            ("see https://example.com/a_b?x=1&y=2.", "see https://example.com/a_b?x=1&y=2."),
            ("line one\nline two\n\nafter a gap", "line one\nline two\n\nafter a gap"),
            ("2*3*4 snake_case ~strike~", "2*3*4 snake_case ~strike~"),
            ("<b>not markup</b> & ${x}", "<b>not markup</b> & ${x}"),
            ("```fn main() {\n    run();\n}```", "```fn main() {\n    run();\n}```"),
        ];
        for (input, expected) in cases {
            let message = format!("<messageML>{}</messageML>", to_message_ml(input));
            let rendered = crate::sandbox::mock_pod::render_message_ml(&message, None, &|_| None)
                .unwrap_or_else(|e| panic!("{input:?}: {e}"));
            let data = rendered.data.to_string();
            let back = to_whatsapp(&rendered.presentation_ml, Some(&data)).expect("readable");
            assert_eq!(back, *expected, "{input:?} via {}", rendered.presentation_ml);
        }
    }

    /// Found by fuzzing (round_trip): a URL whose href had to be normalised (an invisible
    /// character, an IDN host) showed the normalised address, not what the contact wrote.
    #[test]
    fn a_normalised_link_still_shows_what_was_written() {
        for input in ["see https://x.org\u{feff}/a now", "https://bücher.de/x", "https://x.org/a b"]
        {
            let message = format!("<messageML>{}</messageML>", to_message_ml(input));
            let rendered = crate::sandbox::mock_pod::render_message_ml(&message, None, &|_| None)
                .unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(rendered.text, input, "{message}");
            let data = rendered.data.to_string();
            let back = to_whatsapp(&rendered.presentation_ml, Some(&data)).expect("readable");
            assert_eq!(back, input, "via {}", rendered.presentation_ml);
        }
        assert_eq!(
            to_message_ml("https://bücher.de/x"),
            "<a href=\"https://xn--bcher-kva.de/x\">https://bücher.de/x</a>"
        );
    }

    #[test]
    fn quote_snippets_are_one_short_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("hello", 10, "hello"),
            ("exact", 5, "exact"),
            ("line one\nline two", 50, "line one line two"),
            ("  spaced \t out\r\n ", 20, "spaced out"),
            ("abcdefghij", 5, "abcd…"),
            ("abc defgh", 5, "abc…"),
            ("😀😀😀😀😀😀", 3, "😀😀…"),
            ("שלום עולם", 6, "שלום…"),
            ("éééééééééé", 4, "ééé…"),
            ("", 5, ""),
            ("abc", 0, ""),
            ("abc", 1, "…"),
        ];
        for (text, max, expected) in cases {
            let got = quote_snippet(text, *max);
            assert_eq!(got, *expected, "{text:?} in {max}");
            assert!(got.chars().count() <= *max, "{got:?} longer than {max}");
            assert!(!got.contains('\n'), "{got:?}");
        }
        let long = "x".repeat(100_000);
        assert_eq!(quote_snippet(&long, 80).chars().count(), 80);
    }
}
