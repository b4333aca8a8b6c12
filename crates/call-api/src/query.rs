//! The query-string grammar of `calls.api.list`, `calls.api.get.<id>` and `calls.api.changes`:
//! Outreach's two filter syntaxes, sort, paging, counting, sparse fieldsets and the meta flags,
//! decoded into a [`ListQuery`] for the engine, and re-encoded canonically for `links`.
//!
//! Every refusal is a 400 `validationError` whose `source.parameter` names the parameter as
//! decoded (e.g. `filter[colour]`), so a client can tell which part of its query is wrong.

use crate::error::ApiError;
use call_model::{AttrKind, Field, Relation, Timestamp};
use call_projections::{
    Condition, Filter, FilterTarget, FilterValue, ListQuery, PageCursor, SortField, SortKey,
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE,
};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The most values one filter may list (`filter[id]=1,2,...` or repeated `filter[id][]=`):
/// past it the query is refused rather than matched value by value.
pub const MAX_FILTER_VALUES: usize = 1000;

/// The page size of `calls.api.changes` when none is asked for.
pub const DEFAULT_CHANGES_LIMIT: usize = 100;
/// The largest `limit` of `calls.api.changes`.
pub const MAX_CHANGES_LIMIT: usize = 1000;

/// What to put in each resource object besides its id: a sparse fieldset and the meta flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// `fields[call]=...`: only these attributes and relationships; `None` means all.
    pub fields: Option<Fieldset>,
    /// `provideAuthorizationMeta=true`: add `meta.canWrite` and `meta.canDelete`.
    pub authorization_meta: bool,
    /// `provideDataConnections=true`: add `meta.dataConnections`.
    pub data_connections: bool,
}

impl ReadOptions {
    /// Whether these are the options of a read that names none: every member, no meta flags.
    pub fn is_default(&self) -> bool {
        self.fields.is_none() && !self.authorization_meta && !self.data_connections
    }
}

/// The members a sparse fieldset names, in the order the resource object writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fieldset {
    /// Attributes to include.
    pub attributes: Vec<Field>,
    /// Relationships to include.
    pub relationships: Vec<Relation>,
}

impl ReadOptions {
    /// Whether the resource object includes this attribute.
    pub fn includes_attribute(&self, field: Field) -> bool {
        self.fields
            .as_ref()
            .is_none_or(|fields| fields.attributes.contains(&field))
    }

    /// Whether the resource object includes this relationship.
    pub fn includes_relationship(&self, relation: Relation) -> bool {
        self.fields
            .as_ref()
            .is_none_or(|fields| fields.relationships.contains(&relation))
    }
}

/// A parsed `calls.api.list` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRequest {
    /// What the engine runs.
    pub query: ListQuery,
    /// How each row is written.
    pub read: ReadOptions,
    /// Every parameter as decoded, in the order given, for the links.
    params: Vec<(String, String)>,
}

impl ListRequest {
    /// The query string of the first page: every parameter but the cursor.
    pub fn first_link(&self) -> String {
        encode_query(self.params.iter().filter(|(key, _)| !is_cursor_key(key)))
    }

    /// The query string of the page that `cursor` starts: every parameter, the cursor replaced.
    pub fn link(&self, cursor: &PageCursor) -> String {
        let (key, value) = match cursor {
            PageCursor::After(value) => ("page[after]", value),
            PageCursor::Before(value) => ("page[before]", value),
        };
        let cursor = (key.to_owned(), value.clone());
        encode_query(
            self.params
                .iter()
                .filter(|(key, _)| !is_cursor_key(key))
                .chain(std::iter::once(&cursor)),
        )
    }

    /// The parameter the request's cursor came in (`page[after]` or `page[before]`), if any.
    pub fn cursor_parameter(&self) -> Option<&'static str> {
        match self.query.cursor {
            Some(PageCursor::After(_)) => Some("page[after]"),
            Some(PageCursor::Before(_)) => Some("page[before]"),
            None => None,
        }
    }
}

/// A parsed `calls.api.changes` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesRequest {
    /// The log position to read after (`after`, default 0).
    pub after: u64,
    /// The most calls and deletions to return (`limit`, 1 to 1000, default 100).
    pub limit: usize,
    /// How each call is written.
    pub read: ReadOptions,
    /// The read-option parameters as decoded, carried into `links.next`.
    params: Vec<(String, String)>,
}

impl ChangesRequest {
    /// The query string that continues after `position`: `after=<position>&limit=<limit>`, and
    /// any read option that was given.
    pub fn next_link(&self, position: u64) -> String {
        let head = [
            ("after".to_owned(), position.to_string()),
            ("limit".to_owned(), self.limit.to_string()),
        ];
        encode_query(head.iter().chain(self.params.iter()))
    }
}

/// Parses the query string of `calls.api.list`.
pub fn parse_list(query: &str) -> Result<ListRequest, ApiError> {
    let params = decode_query(query)?;
    let mut new_syntax = false;
    for (key, value) in &params {
        if key == "newFilterSyntax" {
            new_syntax = parse_bool(key, value)?;
        }
    }
    let mut seen = Vec::<&str>::new();
    let mut filters = FilterBuilder::new(new_syntax);
    let mut read = ReadOptions::default();
    let mut query = ListQuery {
        filters: Vec::new(),
        sort: Vec::new(),
        page_size: DEFAULT_PAGE_SIZE,
        cursor: None,
        count: false,
    };
    for (key, value) in &params {
        let Some((name, path)) = split_key(key) else {
            return Err(unknown_parameter(key, "list"));
        };
        let repeatable = name == "filter" && path.last() == Some(&"");
        if !repeatable {
            if seen.contains(&key.as_str()) {
                return Err(given_twice(key));
            }
            seen.push(key);
        }
        match (name, path.as_slice()) {
            ("filter", path) => filters.add(key, path, value)?,
            ("sort", []) => query.sort = parse_sort(key, value)?,
            ("page", ["size"]) => query.page_size = parse_page_size(key, value)?,
            ("page", ["after"]) | ("page", ["before"]) => {
                if value.is_empty() {
                    return Err(ApiError::parameter(
                        key,
                        "Expected the opaque cursor of a links.next or links.prev query string.",
                    ));
                }
                if query.cursor.is_some() {
                    return Err(ApiError::parameter(
                        key,
                        "page[after] and page[before] cannot be given together.",
                    ));
                }
                query.cursor = Some(if path == ["after"] {
                    PageCursor::After(value.clone())
                } else {
                    PageCursor::Before(value.clone())
                });
            }
            ("count", []) => query.count = parse_bool(key, value)?,
            ("newFilterSyntax", []) => {}
            _ => {
                if !read_option(key, name, &path, value, &mut read)? {
                    return Err(unknown_parameter(key, "list"));
                }
            }
        }
    }
    query.filters = filters.finish();
    Ok(ListRequest {
        query,
        read,
        params,
    })
}

/// Parses the optional query string of `calls.api.get.<id>`: only `fields[call]`,
/// `provideAuthorizationMeta` and `provideDataConnections`.
pub fn parse_read(query: &str) -> Result<ReadOptions, ApiError> {
    let params = decode_query(query)?;
    let mut seen = Vec::<&str>::new();
    let mut read = ReadOptions::default();
    for (key, value) in &params {
        if seen.contains(&key.as_str()) {
            return Err(given_twice(key));
        }
        seen.push(key);
        let handled = match split_key(key) {
            Some((name, path)) => read_option(key, name, &path, value, &mut read)?,
            None => false,
        };
        if !handled {
            return Err(unknown_parameter(key, "get"));
        }
    }
    Ok(read)
}

/// Parses the payload of `calls.api.changes`: `after=<position>&limit=<n>`, and optionally the
/// read options of a get.
pub fn parse_changes(query: &str) -> Result<ChangesRequest, ApiError> {
    let params = decode_query(query)?;
    let mut seen = Vec::<&str>::new();
    let mut request = ChangesRequest {
        after: 0,
        limit: DEFAULT_CHANGES_LIMIT,
        read: ReadOptions::default(),
        params: Vec::new(),
    };
    for (key, value) in &params {
        if seen.contains(&key.as_str()) {
            return Err(given_twice(key));
        }
        seen.push(key);
        match key.as_str() {
            "after" => request.after = parse_position(key, value)?,
            "limit" => request.limit = parse_limit(key, value, MAX_CHANGES_LIMIT)?,
            _ => {
                let handled = match split_key(key) {
                    Some((name, path)) => read_option(key, name, &path, value, &mut request.read)?,
                    None => false,
                };
                if !handled {
                    return Err(unknown_parameter(key, "changes"));
                }
                request.params.push((key.clone(), value.clone()));
            }
        }
    }
    Ok(request)
}

/// Events per page of `calls.api.backup` unless `limit` says otherwise.
pub const DEFAULT_LOG_PAGE: usize = 1000;
/// The most events one page of `calls.api.backup` asks for (a page is also cut to the max
/// payload).
pub const MAX_LOG_PAGE: usize = 10_000;

/// A page of the log, as `calls.api.backup` asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPageRequest {
    /// The events after this position.
    pub after: u64,
    /// At most this many.
    pub limit: usize,
}

/// Parses the payload of `calls.api.backup`: `after=<position>&limit=<n>`, both optional.
pub fn parse_log_page(query: &str) -> Result<LogPageRequest, ApiError> {
    let params = decode_query(query)?;
    let mut seen = Vec::<&str>::new();
    let mut request = LogPageRequest {
        after: 0,
        limit: DEFAULT_LOG_PAGE,
    };
    for (key, value) in &params {
        if seen.contains(&key.as_str()) {
            return Err(given_twice(key));
        }
        seen.push(key);
        match key.as_str() {
            "after" => request.after = parse_position(key, value)?,
            "limit" => request.limit = parse_limit(key, value, MAX_LOG_PAGE)?,
            _ => return Err(unknown_parameter(key, "backup")),
        }
    }
    Ok(request)
}

/// A log position: an integer of 0 or more.
fn parse_position(key: &str, value: &str) -> Result<u64, ApiError> {
    parse_digits(value).ok_or_else(|| {
        ApiError::parameter(
            key,
            format!("Expected a log position (an integer of 0 or more), got '{value}'."),
        )
    })
}

/// A page's limit: an integer from 1 to `max`.
fn parse_limit(key: &str, value: &str, max: usize) -> Result<usize, ApiError> {
    parse_digits(value)
        .and_then(|limit| usize::try_from(limit).ok())
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| {
            ApiError::parameter(
                key,
                format!("Expected an integer from 1 to {max}, got '{value}'."),
            )
        })
}

/// Re-encodes decoded parameters as a query string: the canonical form of `links`.
pub fn encode_query<'a>(params: impl IntoIterator<Item = &'a (String, String)>) -> String {
    let mut out = String::new();
    for (key, value) in params {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(utf8_percent_encode(key, COMPONENT));
        out.push('=');
        out.extend(utf8_percent_encode(value, COMPONENT));
    }
    out
}

/// What the canonical encoding leaves as it is: unreserved characters, and `[`, `]`, `,` and `:`,
/// which read better in filters and timestamps and mean nothing special to the decoder.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'[')
    .remove(b']')
    .remove(b',')
    .remove(b':');

fn is_cursor_key(key: &str) -> bool {
    key == "page[after]" || key == "page[before]"
}

/// Splits a query string into decoded `(key, value)` pairs, as a URL's query is read: `&`
/// separates, the first `=` splits, `+` is a space, `%XX` an octet, and the result must be UTF-8.
fn decode_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let query = query.trim();
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut params = Vec::new();
    for part in query.split('&').filter(|part| !part.is_empty()) {
        let (raw_key, raw_value) = part.split_once('=').unwrap_or((part, ""));
        let key = decode_component(raw_key).ok_or_else(|| {
            ApiError::parameter(
                raw_key,
                "The parameter name is not UTF-8 once percent-decoded.",
            )
        })?;
        let value = decode_component(raw_value).ok_or_else(|| {
            ApiError::parameter(&key, "The value is not UTF-8 once percent-decoded.")
        })?;
        params.push((key, value));
    }
    Ok(params)
}

/// Percent-decodes one name or value. A `+` is a plus: the payload is not an HTML form, and the
/// `+` of a phone number (`filter[to]=+15550199`) or a UTC offset is what a person types. A
/// space is sent as `%20` (and `%2B` keeps working for a plus).
fn decode_component(raw: &str) -> Option<String> {
    percent_decode(raw.as_bytes())
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// `filter[prospect][id][]` -> `("filter", ["prospect", "id", ""])`; `None` if the brackets do
/// not pair up.
fn split_key(key: &str) -> Option<(&str, Vec<&str>)> {
    let (name, mut rest) = match key.find('[') {
        Some(at) => key.split_at(at),
        None => (key, ""),
    };
    if name.contains(']') {
        return None;
    }
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        let segment = &inner[..close];
        if segment.contains('[') {
            return None;
        }
        path.push(segment);
        rest = &inner[close + 1..];
    }
    Some((name, path))
}

fn unknown_parameter(key: &str, operation: &str) -> ApiError {
    let accepted = match operation {
        "get" => "fields[call], provideAuthorizationMeta and provideDataConnections",
        "changes" => {
            "after, limit, fields[call], provideAuthorizationMeta and provideDataConnections"
        }
        "backup" => "after and limit",
        _ => {
            "filter[...], newFilterSyntax, sort, page[size], page[after], page[before], count, \
             fields[call], provideAuthorizationMeta and provideDataConnections"
        }
    };
    ApiError::parameter(
        key,
        format!("Unknown parameter '{key}' for {operation}: accepted are {accepted}."),
    )
}

fn given_twice(key: &str) -> ApiError {
    ApiError::parameter(
        key,
        format!("The parameter '{key}' is given more than once."),
    )
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::parameter(
            key,
            format!("Expected true or false, got '{value}'."),
        )),
    }
}

/// An id: a positive integer written canonically, without a sign or leading zeros, so that
/// one id has one spelling (`01` and `+1` name no call).
pub fn parse_id(text: &str) -> Option<u64> {
    if text.starts_with('0') {
        return None;
    }
    parse_digits(text).filter(|id| *id > 0)
}

fn parse_digits(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn parse_page_size(key: &str, value: &str) -> Result<usize, ApiError> {
    parse_digits(value)
        .and_then(|size| usize::try_from(size).ok())
        .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
        .ok_or_else(|| {
            ApiError::parameter(
                key,
                format!("Expected an integer from 1 to {MAX_PAGE_SIZE}, got '{value}'."),
            )
        })
}

/// Handles the read options shared by list, get and changes; `false` if `key` is not one.
fn read_option(
    key: &str,
    name: &str,
    path: &[&str],
    value: &str,
    read: &mut ReadOptions,
) -> Result<bool, ApiError> {
    match (name, path) {
        ("fields", ["call"]) => read.fields = Some(parse_fieldset(key, value)?),
        ("fields", _) => {
            return Err(ApiError::parameter(
                key,
                "Sparse fieldsets are keyed by resource type, and this API returns only 'call': use fields[call].",
            ))
        }
        ("provideAuthorizationMeta", []) => read.authorization_meta = parse_bool(key, value)?,
        ("provideDataConnections", []) => read.data_connections = parse_bool(key, value)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_fieldset(key: &str, value: &str) -> Result<Fieldset, ApiError> {
    let mut fieldset = Fieldset::default();
    if value.is_empty() {
        return Ok(fieldset);
    }
    for name in value.split(',') {
        if let Some(field) = Field::from_name(name) {
            if !fieldset.attributes.contains(&field) {
                fieldset.attributes.push(field);
            }
        } else if let Some(relation) = Relation::from_name(name) {
            if !fieldset.relationships.contains(&relation) {
                fieldset.relationships.push(relation);
            }
        } else {
            return Err(ApiError::parameter(
                key,
                format!("'{name}' is not an attribute or relationship of call."),
            ));
        }
    }
    // Write members in the resource object's order whatever order they were named in.
    fieldset.attributes.sort();
    fieldset.relationships.sort();
    Ok(fieldset)
}

fn parse_sort(key: &str, value: &str) -> Result<Vec<SortKey>, ApiError> {
    let mut keys: Vec<SortKey> = Vec::new();
    for item in value.split(',') {
        // `-` descends; `+`, as some clients write it, ascends as no sign does.
        let (descending, name) = match (item.strip_prefix('-'), item.strip_prefix('+')) {
            (Some(name), _) => (true, name),
            (None, Some(name)) => (false, name),
            (None, None) => (false, item),
        };
        let field = if name == "id" {
            SortField::Id
        } else {
            match Field::from_name(name) {
                Some(field) if field.is_sortable() => SortField::Attr(field),
                _ => {
                    let sortable = call_projections::sortable_names();
                    let what = if name.is_empty() {
                        "Expected a comma-separated list of fields, each optionally preceded by '-', e.g. sort=-createdAt,id".to_owned()
                    } else {
                        format!("Cannot sort on '{name}'; sortable are {sortable}")
                    };
                    return Err(ApiError::parameter(key, format!("{what}.")));
                }
            }
        };
        if keys.iter().any(|key| key.field == field) {
            return Err(ApiError::parameter(
                key,
                format!("'{name}' is named more than once."),
            ));
        }
        keys.push(SortKey { field, descending });
    }
    Ok(keys)
}

/// How a filter target's values are typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    /// The call's id: an integer; ranges allowed; never null.
    CallId,
    /// A related resource's id: an integer.
    RelatedId,
    /// A date-time attribute; ranges allowed.
    Time,
    /// `shouldRecordCall`.
    Bool,
    /// A string attribute, restricted to these values if an enumeration.
    Text(Option<&'static [&'static str]>),
    /// `tags` (has any of).
    Tags,
}

impl ValueKind {
    fn of(target: FilterTarget) -> ValueKind {
        match target {
            FilterTarget::Id => ValueKind::CallId,
            FilterTarget::Related(_) => ValueKind::RelatedId,
            FilterTarget::Attr(field) => match field.kind() {
                AttrKind::Time => ValueKind::Time,
                AttrKind::Bool => ValueKind::Bool,
                AttrKind::Enum(values) => ValueKind::Text(Some(values)),
                AttrKind::Text { .. } => ValueKind::Text(None),
                AttrKind::Tags => ValueKind::Tags,
            },
        }
    }

    fn rangeable(self) -> bool {
        matches!(self, ValueKind::CallId | ValueKind::Time)
    }

    /// A value of a rangeable kind, for the examples of an error.
    fn example(self) -> &'static str {
        match self {
            ValueKind::Time => "2024-01-01",
            _ => "100",
        }
    }

    fn parse(self, key: &str, text: &str) -> Result<FilterValue, ApiError> {
        if text.is_empty() {
            return Err(ApiError::parameter(key, "Expected a value, got nothing."));
        }
        match self {
            ValueKind::CallId | ValueKind::RelatedId => parse_id(text)
                .and_then(|id| i64::try_from(id).ok())
                .map(FilterValue::Int)
                .ok_or_else(|| {
                    ApiError::parameter(
                        key,
                        format!("Expected an id, a positive integer without sign or leading zeros, got '{text}'."),
                    )
                }),
            ValueKind::Time => parse_time(text).map(FilterValue::Time).ok_or_else(|| {
                ApiError::parameter(
                    key,
                    format!(
                        "Expected an RFC 3339 date-time such as 2025-01-13T12:47:31.000Z or a date such as 2025-01-13, got '{text}'."
                    ),
                )
            }),
            ValueKind::Bool => match text {
                "true" => Ok(FilterValue::Bool(true)),
                "false" => Ok(FilterValue::Bool(false)),
                _ => Err(ApiError::parameter(
                    key,
                    format!("Expected true or false, got '{text}'."),
                )),
            },
            ValueKind::Text(Some(allowed)) if !allowed.contains(&text) => {
                let list = allowed
                    .iter()
                    .map(|value| format!("'{value}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                Err(ApiError::parameter(
                    key,
                    format!("Expected one of {list}, got '{text}'."),
                ))
            }
            ValueKind::Text(_) | ValueKind::Tags => Ok(FilterValue::Text(text.to_owned())),
        }
    }
}

/// An RFC 3339 date-time, or a date (`2017-01-01`, as Outreach accepts in its ranges), which
/// means the start of that day in UTC.
fn parse_time(text: &str) -> Option<Timestamp> {
    Timestamp::parse(text)
        .or_else(|_| Timestamp::parse_date(text))
        .ok()
}

/// One filter target's condition as its parameters arrive.
enum Pending {
    /// `filter[x]=...` (either syntax): a complete condition.
    Whole(Condition),
    /// `filter[x][]=...` (new syntax): values so far.
    Array(Vec<FilterValue>),
    /// `filter[x][gte]=...` / `[lte]=...` (new syntax).
    Bounds(Option<FilterValue>, Option<FilterValue>),
}

/// Which form a filter parameter has.
enum Form {
    Whole,
    Array,
    Lower,
    Upper,
}

struct FilterBuilder {
    new_syntax: bool,
    targets: Vec<(FilterTarget, String, Pending)>,
}

impl FilterBuilder {
    fn new(new_syntax: bool) -> FilterBuilder {
        FilterBuilder {
            new_syntax,
            targets: Vec::new(),
        }
    }

    fn add(&mut self, key: &str, path: &[&str], value: &str) -> Result<(), ApiError> {
        let (target, form) = resolve(key, path)?;
        if !matches!(form, Form::Whole) && !self.new_syntax {
            return Err(ApiError::parameter(
                key,
                "The array and bound filter forms ([], [gte], [lte]) need newFilterSyntax=true.",
            ));
        }
        let kind = ValueKind::of(target);
        if matches!(form, Form::Lower | Form::Upper) && !kind.rangeable() {
            return Err(ApiError::parameter(
                key,
                "Bounds are offered on id and on date-time attributes only.",
            ));
        }
        let existing = self
            .targets
            .iter()
            .position(|(existing, _, _)| *existing == target);
        let conflict = |first: &str| {
            ApiError::parameter(
                key,
                format!("The filter is already given as '{first}'; use one form per filter (bounds [gte] and [lte] may be combined)."),
            )
        };
        match form {
            Form::Whole => {
                if let Some(index) = existing {
                    return Err(conflict(&self.targets[index].1));
                }
                let condition = if self.new_syntax {
                    new_whole(kind, key, value)?
                } else {
                    old_whole(kind, key, value)?
                };
                self.targets
                    .push((target, key.to_owned(), Pending::Whole(condition)));
            }
            Form::Array => {
                let parsed = kind.parse(key, value)?;
                match existing {
                    None => {
                        self.targets
                            .push((target, key.to_owned(), Pending::Array(vec![parsed])))
                    }
                    Some(index) => match &mut self.targets[index].2 {
                        Pending::Array(values) => {
                            if !values.contains(&parsed) {
                                if values.len() == MAX_FILTER_VALUES {
                                    return Err(too_many_values(key));
                                }
                                values.push(parsed);
                            }
                        }
                        _ => return Err(conflict(&self.targets[index].1)),
                    },
                }
            }
            Form::Lower | Form::Upper => {
                let parsed = kind.parse(key, value)?;
                let index = match existing {
                    Some(index) => index,
                    None => {
                        self.targets
                            .push((target, key.to_owned(), Pending::Bounds(None, None)));
                        self.targets.len() - 1
                    }
                };
                let Pending::Bounds(lower, upper) = &mut self.targets[index].2 else {
                    return Err(conflict(&self.targets[index].1));
                };
                // Repeats of the same bound were refused as duplicate parameters already.
                match form {
                    Form::Lower => *lower = Some(parsed),
                    _ => *upper = Some(parsed),
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Vec<Filter> {
        self.targets
            .into_iter()
            .map(|(target, _, pending)| Filter {
                target,
                condition: match pending {
                    Pending::Whole(condition) => condition,
                    Pending::Array(values) => Condition::AnyOf(values),
                    Pending::Bounds(lower, upper) => Condition::Range { lower, upper },
                },
            })
            .collect()
    }
}

/// Resolves a filter parameter's path to its target and form.
fn resolve(key: &str, path: &[&str]) -> Result<(FilterTarget, Form), ApiError> {
    let (name, rest) =
        match path.split_first() {
            Some((name, rest)) => (*name, rest),
            None => return Err(ApiError::parameter(
                key,
                "Name what to filter on, e.g. filter[state]=completed or filter[prospect][id]=5.",
            )),
        };
    let form_of = |segment: Option<&&str>| -> Option<Form> {
        match segment {
            None => Some(Form::Whole),
            Some(&"") => Some(Form::Array),
            Some(&"gte") => Some(Form::Lower),
            Some(&"lte") => Some(Form::Upper),
            Some(_) => None,
        }
    };
    let malformed = || {
        ApiError::parameter(
            key,
            format!("Unknown filter form '{key}': expected filter[{name}], filter[{name}][], filter[{name}][gte] or filter[{name}][lte]."),
        )
    };
    if let Some(relation) = Relation::from_name(name) {
        if !relation.is_filterable() {
            return Err(ApiError::parameter(
                key,
                format!("The relationship '{name}' cannot be filtered on."),
            ));
        }
        if rest.first() != Some(&"id") {
            return Err(ApiError::parameter(
                key,
                format!("Filter a relationship by its id: filter[{name}][id]=..."),
            ));
        }
        if rest.len() > 2 {
            return Err(malformed());
        }
        let form = form_of(rest.get(1)).ok_or_else(malformed)?;
        return Ok((FilterTarget::Related(relation), form));
    }
    let target = if name == "id" {
        FilterTarget::Id
    } else if let Some(field) = Field::from_name(name) {
        FilterTarget::Attr(field)
    } else {
        return Err(ApiError::parameter(
            key,
            format!(
                "'{name}' is not an attribute or relationship of call that can be filtered on."
            ),
        ));
    };
    if rest.len() > 1 {
        return Err(malformed());
    }
    let form = form_of(rest.first()).ok_or_else(malformed)?;
    Ok((target, form))
}

/// A range `a..b` with an end left empty: which word leaves it open, with an example.
fn missing_bound(key: &str, kind: ValueKind, upper: bool) -> ApiError {
    let example = kind.example();
    let (bound, open, range) = if upper {
        ("an upper bound after", "inf", format!("{example}..inf"))
    } else {
        (
            "a lower bound before",
            "neginf",
            format!("neginf..{example}"),
        )
    };
    ApiError::parameter(
        key,
        format!("A range needs {bound} '..': a value, or {open} for none, e.g. {range}."),
    )
}

/// `filter[x]=v` in the old syntax: `__null__`, `__notnull__`, a range `a..b` (ids and
/// date-times; `neginf`/`inf` open an end), or a comma-separated any-of list.
fn old_whole(kind: ValueKind, key: &str, value: &str) -> Result<Condition, ApiError> {
    if let Some(condition) = null_condition(kind, key, value)? {
        return Ok(condition);
    }
    if kind.rangeable() {
        if let Some((low, high)) = value.split_once("..") {
            if value.contains(',') {
                return Err(ApiError::parameter(
                    key,
                    "A range cannot be combined with other values.",
                ));
            }
            let lower = match low {
                "neginf" => None,
                "" => return Err(missing_bound(key, kind, false)),
                low => Some(kind.parse(key, low)?),
            };
            let upper = match high {
                "inf" => None,
                "" => return Err(missing_bound(key, kind, true)),
                high => Some(kind.parse(key, high)?),
            };
            return Ok(Condition::Range { lower, upper });
        }
    }
    let mut values = Vec::new();
    if value.split(',').count() > MAX_FILTER_VALUES {
        return Err(too_many_values(key));
    }
    for item in value.split(',') {
        if item == "__null__" || item == "__notnull__" {
            return Err(ApiError::parameter(
                key,
                format!("'{item}' cannot be combined with other values."),
            ));
        }
        let parsed = kind.parse(key, item)?;
        if !values.contains(&parsed) {
            values.push(parsed);
        }
    }
    Ok(Condition::AnyOf(values))
}

/// The error of a filter listing more than [`MAX_FILTER_VALUES`] values.
fn too_many_values(key: &str) -> ApiError {
    ApiError::parameter(
        key,
        format!("A filter takes at most {MAX_FILTER_VALUES} values; split the query into several."),
    )
}

/// `filter[x]=v` in the new syntax: `__null__`, `__notnull__`, or exactly one value (which may
/// contain `,` and `..`).
fn new_whole(kind: ValueKind, key: &str, value: &str) -> Result<Condition, ApiError> {
    if let Some(condition) = null_condition(kind, key, value)? {
        return Ok(condition);
    }
    Ok(Condition::AnyOf(vec![kind.parse(key, value)?]))
}

fn null_condition(kind: ValueKind, key: &str, value: &str) -> Result<Option<Condition>, ApiError> {
    let condition = match value {
        "__null__" => Condition::Null,
        "__notnull__" => Condition::NotNull,
        _ => return Ok(None),
    };
    if kind == ValueKind::CallId {
        return Err(ApiError::parameter(key, "A call's id is never null."));
    }
    Ok(Some(condition))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorSource;

    fn at(text: &str) -> FilterValue {
        FilterValue::Time(Timestamp::parse(text).unwrap())
    }

    fn text(value: &str) -> FilterValue {
        FilterValue::Text(value.to_owned())
    }

    fn filters(query: &str) -> Vec<Filter> {
        match parse_list(query) {
            Ok(request) => request.query.filters,
            Err(error) => panic!("{query}: {error}"),
        }
    }

    fn one(query: &str) -> Filter {
        let mut all = filters(query);
        assert_eq!(all.len(), 1, "{query}");
        all.remove(0)
    }

    /// Asserts the query is refused with 400 naming `parameter`; returns the detail.
    fn refused(query: &str, parameter: &str) -> String {
        let error = parse_list(query).expect_err(query);
        assert_eq!(error.status, 400, "{query}");
        let object = &error.errors[0];
        assert_eq!(object.id, "validationError");
        assert_eq!(
            object.source,
            Some(ErrorSource::Parameter(parameter.to_owned())),
            "{query}: {}",
            object.detail
        );
        object.detail.clone()
    }

    #[test]
    fn an_empty_query_is_the_first_page_of_everything_by_id() {
        for query in ["", "?", " ", "&&"] {
            let request = parse_list(query).unwrap();
            assert_eq!(
                request.query,
                ListQuery {
                    filters: vec![],
                    sort: vec![],
                    page_size: DEFAULT_PAGE_SIZE,
                    cursor: None,
                    count: false
                }
            );
            assert_eq!(request.read, ReadOptions::default());
            assert_eq!(request.first_link(), "");
        }
    }

    #[test]
    fn old_syntax_equality_lists_ranges_and_nulls() {
        assert_eq!(
            one("filter[direction]=inbound"),
            Filter {
                target: FilterTarget::Attr(Field::Direction),
                condition: Condition::AnyOf(vec![text("inbound")])
            }
        );
        assert_eq!(
            one("filter[state]=completed,no_answer").condition,
            Condition::AnyOf(vec![text("completed"), text("no_answer")])
        );
        assert_eq!(
            one("filter[createdAt]=2024-01-01T00:00:00Z..inf").condition,
            Condition::Range {
                lower: Some(at("2024-01-01T00:00:00Z")),
                upper: None
            }
        );
        assert_eq!(
            one("filter[updatedAt]=neginf..2024-02-01T00:00:00.000Z").condition,
            Condition::Range {
                lower: None,
                upper: Some(at("2024-02-01T00:00:00Z"))
            }
        );
        assert_eq!(
            one("filter[dialedAt]=2024-01-01T00:00:00Z..2024-01-02T00:00:00%2B01:00").condition,
            Condition::Range {
                lower: Some(at("2024-01-01T00:00:00Z")),
                upper: Some(at("2024-01-01T23:00:00Z"))
            }
        );
        assert_eq!(
            one("filter[id]=5..10"),
            Filter {
                target: FilterTarget::Id,
                condition: Condition::Range {
                    lower: Some(FilterValue::Int(5)),
                    upper: Some(FilterValue::Int(10))
                }
            }
        );
        assert_eq!(
            one("filter[id]=1,2,3").condition,
            Condition::AnyOf(vec![
                FilterValue::Int(1),
                FilterValue::Int(2),
                FilterValue::Int(3)
            ])
        );
        assert_eq!(
            one("filter[recordingUrl]=__null__").condition,
            Condition::Null
        );
        assert_eq!(
            one("filter[answeredAt]=__notnull__").condition,
            Condition::NotNull
        );
        assert_eq!(
            one("filter[prospect][id]=5,6"),
            Filter {
                target: FilterTarget::Related(Relation::Prospect),
                condition: Condition::AnyOf(vec![FilterValue::Int(5), FilterValue::Int(6)])
            }
        );
        assert_eq!(one("filter[user][id]=__null__").condition, Condition::Null);
        assert_eq!(
            one("filter[tags]=Interested"),
            Filter {
                target: FilterTarget::Attr(Field::Tags),
                condition: Condition::AnyOf(vec![text("Interested")])
            }
        );
        assert_eq!(
            one("filter[shouldRecordCall]=true").condition,
            Condition::AnyOf(vec![FilterValue::Bool(true)])
        );
        // Text values are not ranges: `..` is literal outside ids and date-times.
        assert_eq!(
            one("filter[note]=a..b").condition,
            Condition::AnyOf(vec![text("a..b")])
        );
        // `+` is a plus, for every attribute; `%20` is a space and `%2B` a plus too.
        assert_eq!(
            one("filter[to]=+15550199").condition,
            Condition::AnyOf(vec![text("+15550199")])
        );
        assert_eq!(
            one("filter[to]=%2B15550199").condition,
            Condition::AnyOf(vec![text("+15550199")])
        );
        assert_eq!(
            one("filter[note]=a+b%20c").condition,
            Condition::AnyOf(vec![text("a+b c")])
        );
        assert_eq!(
            one("filter[outcome]=Not%20Answered").condition,
            Condition::AnyOf(vec![text("Not Answered")])
        );
        // A date is the start of its day in UTC, as in Outreach's `2017-01-01..inf`.
        assert_eq!(
            one("filter[updatedAt]=2017-01-01..inf").condition,
            Condition::Range {
                lower: Some(at("2017-01-01T00:00:00Z")),
                upper: None
            }
        );
        assert_eq!(
            one("filter[dialedAt]=neginf..2017-01-31").condition,
            Condition::Range {
                lower: None,
                upper: Some(at("2017-01-31T00:00:00Z"))
            }
        );
        assert_eq!(
            one("newFilterSyntax=true&filter[dialedAt][gte]=2017-01-01").condition,
            Condition::Range {
                lower: Some(at("2017-01-01T00:00:00Z")),
                upper: None
            }
        );
        assert!(parse_list("filter[dialedAt]=2017-13-01..inf").is_err());
        let refused = parse_list("filter[dialedAt]=2017-01-01T10:00:00 01:00..inf").unwrap_err();
        assert!(
            !refused.errors[0].detail.contains("%2B"),
            "no hint about a '+' that was never sent: {}",
            refused.errors[0].detail
        );
        assert_eq!(
            one("filter[completedAt]=2024-01-01T01:00:00+01:00..inf").condition,
            Condition::Range {
                lower: Some(at("2024-01-01T00:00:00Z")),
                upper: None
            }
        );
        // Filters combine with AND, in the order given.
        let all = filters(
            "filter[direction]=outbound&filter[sequence][id]=3&filter[stateChangedAt]=__notnull__",
        );
        assert_eq!(
            all.iter().map(|filter| filter.target).collect::<Vec<_>>(),
            vec![
                FilterTarget::Attr(Field::Direction),
                FilterTarget::Related(Relation::Sequence),
                FilterTarget::Attr(Field::StateChangedAt)
            ]
        );
    }

    #[test]
    fn every_attribute_and_filterable_relationship_can_be_filtered() {
        for field in Field::ALL {
            let value = match field.kind() {
                AttrKind::Time => "2024-01-01T00:00:00Z",
                AttrKind::Bool => "false",
                AttrKind::Enum(values) => values[0],
                AttrKind::Text { .. } | AttrKind::Tags => "x",
            };
            let query = format!("filter[{}]={}", field.name(), encode(value));
            assert_eq!(one(&query).target, FilterTarget::Attr(*field));
        }
        for relation in Relation::ALL {
            let query = format!("filter[{}][id]=1", relation.name());
            if relation.is_filterable() {
                assert_eq!(one(&query).target, FilterTarget::Related(*relation));
            } else {
                refused(&query, &format!("filter[{}][id]", relation.name()));
            }
        }
    }

    fn encode(value: &str) -> String {
        utf8_percent_encode(value, COMPONENT).to_string()
    }

    #[test]
    fn new_syntax_arrays_bounds_and_literal_values() {
        assert_eq!(
            one("newFilterSyntax=true&filter[state][]=completed&filter[state][]=no_answer")
                .condition,
            Condition::AnyOf(vec![text("completed"), text("no_answer")])
        );
        assert_eq!(
            one("filter[updatedAt][gte]=2024-01-01T00:00:00Z&filter[updatedAt][lte]=2024-02-01T00:00:00Z&newFilterSyntax=true")
                .condition,
            Condition::Range {
                lower: Some(at("2024-01-01T00:00:00Z")),
                upper: Some(at("2024-02-01T00:00:00Z"))
            }
        );
        assert_eq!(
            one("newFilterSyntax=true&filter[id][gte]=7").condition,
            Condition::Range {
                lower: Some(FilterValue::Int(7)),
                upper: None
            }
        );
        // Values may contain `,` and `..`.
        assert_eq!(
            one("newFilterSyntax=true&filter[note]=a,b..c").condition,
            Condition::AnyOf(vec![text("a,b..c")])
        );
        assert_eq!(
            one("newFilterSyntax=true&filter[tags][]=a,b&filter[tags][]=c").condition,
            Condition::AnyOf(vec![text("a,b"), text("c")])
        );
        assert_eq!(
            one("newFilterSyntax=true&filter[prospect][id][]=1&filter[prospect][id][]=2"),
            Filter {
                target: FilterTarget::Related(Relation::Prospect),
                condition: Condition::AnyOf(vec![FilterValue::Int(1), FilterValue::Int(2)])
            }
        );
        assert_eq!(
            one("newFilterSyntax=true&filter[note]=__null__").condition,
            Condition::Null
        );
        assert_eq!(
            one("newFilterSyntax=false&filter[state]=a,b").condition,
            Condition::AnyOf(vec![text("a"), text("b")])
        );
    }

    #[test]
    fn a_range_without_a_bound_says_how_to_leave_it_open() {
        assert_eq!(
            refused("filter[dialedAt]=2024-01-01..", "filter[dialedAt]"),
            "A range needs an upper bound after '..': a value, or inf for none, e.g. 2024-01-01..inf."
        );
        assert_eq!(
            refused("filter[id]=..7", "filter[id]"),
            "A range needs a lower bound before '..': a value, or neginf for none, e.g. neginf..100."
        );
    }

    #[test]
    fn bad_filters_name_the_parameter() {
        refused("filter[colour]=red", "filter[colour]");
        refused("filter[direction]=sideways", "filter[direction]");
        refused("filter[createdAt]=yesterday", "filter[createdAt]");
        refused("filter[createdAt]=2024-01..inf", "filter[createdAt]");
        refused("filter[id]=abc", "filter[id]");
        refused("filter[id]=-1", "filter[id]");
        refused("filter[id]=__null__", "filter[id]");
        refused("filter[id]=1..2,5", "filter[id]");
        refused("filter[id]=1,,2", "filter[id]");
        refused("filter[state]=", "filter[state]");
        refused("filter[state]=a,__null__", "filter[state]");
        refused("filter[shouldRecordCall]=yes", "filter[shouldRecordCall]");
        refused("filter[prospect]=5", "filter[prospect]");
        refused("filter[prospect][id]=x", "filter[prospect][id]");
        refused("filter[prospect][id]=1..5", "filter[prospect][id]");
        refused("filter[prospect][name]=x", "filter[prospect][name]");
        refused("filter[associatedId][id]=1", "filter[associatedId][id]");
        refused("filter[batches][id]=1", "filter[batches][id]");
        refused("filter=1", "filter");
        refused("filter[state][]=a", "filter[state][]");
        refused(
            "filter[updatedAt][gte]=2024-01-01T00:00:00Z",
            "filter[updatedAt][gte]",
        );
        refused(
            "newFilterSyntax=true&filter[state][gte]=a",
            "filter[state][gte]",
        );
        refused(
            "newFilterSyntax=true&filter[state][ne]=a",
            "filter[state][ne]",
        );
        refused(
            "newFilterSyntax=true&filter[state]=a&filter[state][]=b",
            "filter[state][]",
        );
        refused(
            "newFilterSyntax=true&filter[id][gte]=1&filter[id][gte]=2",
            "filter[id][gte]",
        );
        refused(
            "newFilterSyntax=true&filter[id][]=1&filter[id][lte]=2",
            "filter[id][lte]",
        );
        refused("filter[state]=a&filter[state]=b", "filter[state]");
        refused("newFilterSyntax=maybe", "newFilterSyntax");
        let detail = refused("filter[colour]=red", "filter[colour]");
        assert!(detail.contains("colour"), "{detail}");
    }

    #[test]
    fn sort_page_count_and_read_options() {
        let request = parse_list(
            "sort=-createdAt,id&page[size]=100&count=true&fields[call]=to,state,prospect&provideAuthorizationMeta=true&provideDataConnections=true",
        )
        .unwrap();
        assert_eq!(
            request.query.sort,
            vec![
                SortKey {
                    field: SortField::Attr(Field::CreatedAt),
                    descending: true
                },
                SortKey {
                    field: SortField::Id,
                    descending: false
                }
            ]
        );
        assert_eq!(request.query.page_size, 100);
        assert!(request.query.count);
        assert_eq!(
            request.read,
            ReadOptions {
                fields: Some(Fieldset {
                    attributes: vec![Field::State, Field::To],
                    relationships: vec![Relation::Prospect]
                }),
                authorization_meta: true,
                data_connections: true
            }
        );
        for name in [
            "id",
            "createdAt",
            "updatedAt",
            "state",
            "outcome",
            "from",
            "to",
            "recordingUrl",
            "userCallType",
            "answeredAt",
            "completedAt",
            "dialedAt",
            "returnedAt",
            "stateChangedAt",
        ] {
            parse_list(&format!("sort=-{name}")).unwrap();
        }
        assert_eq!(
            parse_list("page[after]=abc").unwrap().query.cursor,
            Some(PageCursor::After("abc".into()))
        );
        assert_eq!(
            parse_list("page[before]=abc").unwrap().query.cursor,
            Some(PageCursor::Before("abc".into()))
        );
        assert_eq!(
            parse_list("page%5Bsize%5D=1000").unwrap().query.page_size,
            1000
        );
        assert_eq!(
            parse_list("fields[call]=").unwrap().read.fields,
            Some(Fieldset::default())
        );
    }

    #[test]
    fn bad_sort_page_and_unknown_parameters_name_the_parameter() {
        refused("sort=note", "sort");
        refused("sort=colour", "sort");
        refused("sort=", "sort");
        refused("sort=id,,createdAt", "sort");
        refused("sort=id,-id", "sort");
        refused("sort=id&sort=createdAt", "sort");
        for size in ["0", "1001", "-1", "ten", "", "99999999999999999999999"] {
            refused(&format!("page[size]={size}"), "page[size]");
        }
        refused("page[after]=", "page[after]");
        refused("page[after]=a&page[before]=b", "page[before]");
        refused("page[number]=2", "page[number]");
        refused("count=yes", "count");
        refused("colour=red", "colour");
        refused("include=prospect", "include");
        refused("filter[state=a", "filter[state");
        refused("fields[call]=state,colour", "fields[call]");
        refused("fields[prospect]=name", "fields[prospect]");
        refused("provideDataConnections=1", "provideDataConnections");
        refused("%FF=1", "%FF");
        refused("filter[note]=%FF", "filter[note]");
    }

    #[test]
    fn links_carry_every_parameter_canonically_with_the_cursor_replaced() {
        let request = parse_list(
            "filter%5Bstate%5D=completed,no_answer&filter[outcome]=Not%20Answered&filter[createdAt]=2024-01-01T00:00:00%2B01:00..inf&page[after]=old&sort=-createdAt&page[size]=2",
        )
        .unwrap();
        assert_eq!(request.cursor_parameter(), Some("page[after]"));
        let first = request.first_link();
        assert_eq!(
            first,
            "filter[state]=completed,no_answer&filter[outcome]=Not%20Answered&filter[createdAt]=2024-01-01T00:00:00%2B01:00..inf&sort=-createdAt&page[size]=2"
        );
        let next = request.link(&PageCursor::After("c/+=".into()));
        assert_eq!(next, format!("{first}&page[after]=c%2F%2B%3D"));
        let prev = request.link(&PageCursor::Before("p".into()));
        assert_eq!(prev, format!("{first}&page[before]=p"));
        // A link parses back to the same query, with the new cursor.
        let again = parse_list(&next).unwrap();
        assert_eq!(again.query.filters, request.query.filters);
        assert_eq!(again.query.cursor, Some(PageCursor::After("c/+=".into())));
        assert_eq!(again.link(&PageCursor::After("c/+=".into())), next);
    }

    #[test]
    fn get_accepts_only_the_read_options() {
        assert_eq!(parse_read("").unwrap(), ReadOptions::default());
        let read = parse_read("fields[call]=state&provideDataConnections=true").unwrap();
        assert!(read.data_connections && !read.authorization_meta);
        assert!(read.includes_attribute(Field::State));
        assert!(!read.includes_attribute(Field::To));
        assert!(!read.includes_relationship(Relation::Prospect));
        for (query, parameter) in [
            ("filter[state]=a", "filter[state]"),
            ("page[size]=1", "page[size]"),
            ("provideAuthorizationMeta=1", "provideAuthorizationMeta"),
            ("fields[call]=a&fields[call]=b", "fields[call]"),
        ] {
            let error = parse_read(query).unwrap_err();
            assert_eq!(
                error.errors[0].source,
                Some(ErrorSource::Parameter(parameter.into()))
            );
        }
    }

    #[test]
    fn a_filter_takes_at_most_max_filter_values_values() {
        let list = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert_eq!(
            one(&format!("filter[id]={}", list(MAX_FILTER_VALUES))).condition,
            Condition::AnyOf(
                (1..=MAX_FILTER_VALUES as i64)
                    .map(FilterValue::Int)
                    .collect()
            )
        );
        let detail = refused(
            &format!("filter[id]={}", list(MAX_FILTER_VALUES + 1)),
            "filter[id]",
        );
        assert!(detail.contains("at most 1000 values"), "{detail}");
        let repeated = (1..=MAX_FILTER_VALUES + 1)
            .map(|i| format!("filter[id][]={i}"))
            .collect::<Vec<_>>()
            .join("&");
        let detail = refused(&format!("newFilterSyntax=true&{repeated}"), "filter[id][]");
        assert!(detail.contains("at most 1000 values"), "{detail}");
    }

    #[test]
    fn changes_takes_after_and_limit() {
        let request = parse_changes("").unwrap();
        assert_eq!((request.after, request.limit), (0, DEFAULT_CHANGES_LIMIT));
        assert_eq!(request.next_link(9), "after=9&limit=100");
        let request = parse_changes("after=42&limit=7&provideDataConnections=true").unwrap();
        assert_eq!((request.after, request.limit), (42, 7));
        assert!(request.read.data_connections);
        assert_eq!(
            request.next_link(50),
            "after=50&limit=7&provideDataConnections=true"
        );
        for (query, parameter) in [
            ("after=-1", "after"),
            ("after=x", "after"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=", "limit"),
            ("since=1", "since"),
            ("after=1&after=2", "after"),
        ] {
            let error = parse_changes(query).unwrap_err();
            assert_eq!(
                error.errors[0].source,
                Some(ErrorSource::Parameter(parameter.into())),
                "{query}"
            );
        }
    }
}
