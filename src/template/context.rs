//! The minijinja context of one row.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// The placeholder for the 1-based data row number (the report's `row`). A list column of
/// the same name wins: then `{{ row }}` is that column, as it always was.
pub const ROW_VARIABLE: &str = "row";

/// What a row's templates see: the columns they use by name and, when they use
/// [`ROW_VARIABLE`] and the list has no such column, the row number (an integer).
#[derive(Debug, Default)]
pub(crate) struct RowContext<'a> {
    pub(crate) columns: BTreeMap<&'a str, &'a str>,
    pub(crate) row: Option<u64>,
}

impl Serialize for RowContext<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = self.columns.len() + usize::from(self.row.is_some());
        let mut map = s.serialize_map(Some(len))?;
        for (name, value) in &self.columns {
            map.serialize_entry(name, value)?;
        }
        if let Some(n) = self.row {
            map.serialize_entry(ROW_VARIABLE, &n)?;
        }
        map.end()
    }
}
