//! Planning a Parquet source: list the files, read every footer, check the
//! schemas and the columns the pipeline needs, and cut the rows into blocks.
//! All of it happens before any task starts, so a typo in a column name or a
//! corrupt file fails in seconds with the file's name, and nothing is written.

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::ParquetObjectReader;

use crate::error::{Error, Result};
use crate::location::{self, Location};
use crate::steps::Source;

/// A block to read: where from, and how big (for the memory budget).
#[derive(Clone, Debug)]
pub(crate) struct SourceBlock {
    pub source: Source,
    pub rows: usize,
    /// Estimated in-memory size.
    pub bytes: u64,
    /// Where its rows come from, for error messages ("a.parquet rows 0..5000").
    pub origin: String,
}

/// What the pipeline needs from its input.
pub(crate) struct Needs<'a> {
    /// Columns to read (all when `None`).
    pub columns: Option<&'a [String]>,
    /// Columns with the types accepted for each.
    pub typed: &'a [(String, Vec<DataType>)],
}

/// How to cut blocks.
pub(crate) struct Cutting {
    /// Target in-memory bytes per block.
    pub target_bytes: u64,
    /// At least this many blocks when the rows allow (so every worker gets work).
    pub min_blocks: usize,
    /// Keep only the first this many rows.
    pub limit: Option<usize>,
    /// Number the rows over the whole input in this Int64 column.
    pub row_numbers: Option<String>,
    /// Exactly this many blocks of equal rows (`repartition`), instead of
    /// `target_bytes` and `min_blocks`.
    pub exact_blocks: Option<usize>,
    /// The first block holds at most this many rows (not with `exact_blocks`).
    pub first_block_rows: Option<usize>,
}

/// One input file with its footer.
struct InputFile {
    url: String,
    metadata: ArrowReaderMetadata,
}

/// Lists, checks and cuts the input.
pub(crate) async fn plan(
    urls: &[String],
    needs: &Needs<'_>,
    cutting: &Cutting,
) -> Result<(SchemaRef, Vec<SourceBlock>)> {
    if urls.is_empty() {
        return Err(Error::Invalid(
            "read_parquet was given no input URLs".into(),
        ));
    }
    let mut files = Vec::new();
    for url in urls {
        for (store, meta, file_url) in list_files(url).await? {
            files.push(open(store, meta, file_url).await?);
        }
    }
    let schema = check_schemas(&files, needs)?;
    let total_rows: usize = files
        .iter()
        .map(|f| f.metadata.metadata().file_metadata().num_rows().max(0) as usize)
        .sum();
    if total_rows == 0 {
        return Err(Error::Invalid(format!(
            "input {} has no rows ({} files, all empty); nothing to do",
            urls.join(", "),
            files.len()
        )));
    }
    let mut blocks = Vec::new();
    let mut file_offset = 0u64;
    for file in &files {
        blocks.extend(cut_file(file, needs.columns, cutting, file_offset));
        file_offset += file.metadata.metadata().file_metadata().num_rows().max(0) as u64;
    }
    if cutting.exact_blocks.is_none() {
        split_until(&mut blocks, cutting.min_blocks);
        if let Some(rows) = cutting.first_block_rows {
            small_first_block(&mut blocks, rows);
        }
    }
    if let Some(limit) = cutting.limit {
        truncate(&mut blocks, limit);
    }
    if let Some(count) = cutting.exact_blocks {
        blocks = rebalance(blocks, count);
    }
    let schema = match needs.columns {
        Some(columns) => {
            let indices: Vec<usize> = columns
                .iter()
                .map(|c| schema.index_of(c).expect("checked"))
                .collect();
            Arc::new(
                schema
                    .project(&indices)
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            )
        }
        None => schema,
    };
    Ok((schema, blocks))
}

async fn open(store: Arc<dyn ObjectStore>, meta: ObjectMeta, url: String) -> Result<InputFile> {
    let mut reader =
        ParquetObjectReader::new(store, meta.location.clone()).with_file_size(meta.size);
    let metadata = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
        .await
        .map_err(|e| {
            Error::Invalid(format!(
                "input {url} is not a readable Parquet file ({e}); remove it or fix it"
            ))
        })?;
    Ok(InputFile { url, metadata })
}

/// Every file has the first file's columns and types, and the needed columns.
fn check_schemas(files: &[InputFile], needs: &Needs<'_>) -> Result<SchemaRef> {
    let first = &files[0];
    let schema = first.metadata.schema().clone();
    for file in files {
        let this = file.metadata.schema();
        let names = || {
            this.fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for column in needs.columns.unwrap_or_default() {
            if this.index_of(column).is_err() {
                return Err(Error::Invalid(format!(
                    "input {} has no column {column:?} (select_columns); its columns are: {}",
                    file.url,
                    names()
                )));
            }
        }
        for (column, accepted) in needs.typed {
            let Ok(index) = this.index_of(column) else {
                return Err(Error::Invalid(format!(
                    "input {} has no column {column:?}, which the pipeline's function reads; \
                     its columns are: {}",
                    file.url,
                    names()
                )));
            };
            let found = this.field(index).data_type();
            if !accepted.is_empty() && !accepted.contains(found) {
                let wanted: Vec<String> = accepted.iter().map(ToString::to_string).collect();
                return Err(Error::Invalid(format!(
                    "input {} column {column:?} has type {found}; the pipeline's function \
                     needs {}",
                    file.url,
                    wanted.join(" or ")
                )));
            }
        }
        for field in schema.fields() {
            match this.field_with_name(field.name()) {
                Ok(other) if other.data_type() == field.data_type() => {}
                Ok(other) => {
                    return Err(Error::Invalid(format!(
                        "input {} column {:?} has type {}, but {} has {}; all inputs must \
                         share one schema",
                        file.url,
                        field.name(),
                        other.data_type(),
                        first.url,
                        field.data_type()
                    )));
                }
                Err(_) => {
                    return Err(Error::Invalid(format!(
                        "input {} has no column {:?}, which {} has; all inputs must share \
                         one schema",
                        file.url,
                        field.name(),
                        first.url
                    )));
                }
            }
        }
    }
    Ok(schema)
}

/// A file's row groups grouped into blocks of about `target_bytes`.
fn cut_file(
    file: &InputFile,
    columns: Option<&[String]>,
    cutting: &Cutting,
    file_offset: u64,
) -> Vec<SourceBlock> {
    let target_bytes = cutting.target_bytes;
    let metadata = file.metadata.metadata();
    let wanted = |path: &str| {
        columns.is_none_or(|columns| {
            columns
                .iter()
                .any(|c| path == c || path.starts_with(&format!("{c}.")))
        })
    };
    let mut blocks = Vec::new();
    let mut first_row = 0usize;
    let mut current: Option<(Vec<usize>, usize, usize, u64)> = None; // groups, start row, rows, bytes
    for (index, group) in metadata.row_groups().iter().enumerate() {
        let rows = group.num_rows().max(0) as usize;
        let bytes: u64 = group
            .columns()
            .iter()
            .filter(|c| wanted(&c.column_path().string()))
            .map(|c| c.uncompressed_size().max(0) as u64)
            .sum();
        let entry = current.get_or_insert_with(|| (Vec::new(), first_row, 0, 0));
        entry.0.push(index);
        entry.2 += rows;
        entry.3 += bytes;
        first_row += rows;
        if entry.3 >= target_bytes {
            let entry = current.take().expect("set above");
            blocks.push(block_of(file, columns, cutting, file_offset, entry));
        }
    }
    if let Some(entry) = current.filter(|e| e.2 > 0) {
        blocks.push(block_of(file, columns, cutting, file_offset, entry));
    }
    blocks.retain(|b| b.rows > 0);
    blocks
}

fn block_of(
    file: &InputFile,
    columns: Option<&[String]>,
    cutting: &Cutting,
    file_offset: u64,
    (groups, start, rows, bytes): (Vec<usize>, usize, usize, u64),
) -> SourceBlock {
    SourceBlock {
        source: Source::Parquet {
            url: file.url.clone(),
            row_groups: groups,
            skip: 0,
            rows,
            columns: columns.map(<[String]>::to_vec),
            row_numbers: cutting.row_numbers.clone(),
            first_row: file_offset + start as u64,
        },
        rows,
        bytes,
        origin: format!("{} rows {start}..{}", file.url, start + rows),
    }
}

/// Splits the largest blocks in halves until there are `min_blocks` (or
/// every block is one row).
pub(crate) fn split_until(blocks: &mut Vec<SourceBlock>, min_blocks: usize) {
    while blocks.len() < min_blocks {
        let Some((index, _)) = blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.rows >= 2)
            .max_by_key(|(_, b)| b.rows)
        else {
            return;
        };
        let block = blocks.remove(index);
        let (first, second) = halve(&block);
        blocks.insert(index, second);
        blocks.insert(index, first);
    }
}

/// Cuts the first block down to `rows` rows (the rest becomes the second
/// block), so the pipeline's first output comes soon after it starts: with
/// a model in the map stage, a block of thousands of rows takes a minute.
pub(crate) fn small_first_block(blocks: &mut Vec<SourceBlock>, rows: usize) {
    let Some(first) = blocks.first() else {
        return;
    };
    if rows > 0 && first.rows > rows {
        let (head, tail) = split_at(first, rows);
        blocks.splice(0..1, [head, tail]);
    }
}

fn halve(block: &SourceBlock) -> (SourceBlock, SourceBlock) {
    split_at(block, block.rows / 2)
}

/// The first `head_rows` rows of `block`, and the rest.
fn split_at(block: &SourceBlock, head_rows: usize) -> (SourceBlock, SourceBlock) {
    let tail_rows = block.rows - head_rows;
    let head_bytes = block.bytes * head_rows as u64 / block.rows.max(1) as u64;
    let (head, tail) = match &block.source {
        Source::Concat(parts) => {
            let (mut head, mut tail) = (Vec::new(), Vec::new());
            let mut seen = 0;
            for (source, rows) in parts {
                if seen + rows <= head_rows {
                    head.push((source.clone(), *rows));
                } else if seen >= head_rows {
                    tail.push((source.clone(), *rows));
                } else {
                    let piece = SourceBlock {
                        source: source.clone(),
                        rows: *rows,
                        bytes: 0,
                        origin: String::new(),
                    };
                    let (a, b) = split_at(&piece, head_rows - seen);
                    head.push((a.source, a.rows));
                    tail.push((b.source, b.rows));
                }
                seen += rows;
            }
            (Source::Concat(head), Source::Concat(tail))
        }
        Source::Range { start, end } => {
            let middle = start + head_rows as i64;
            (
                Source::Range {
                    start: *start,
                    end: middle,
                },
                Source::Range {
                    start: middle,
                    end: *end,
                },
            )
        }
        Source::Parquet {
            url,
            row_groups,
            skip,
            columns,
            row_numbers,
            first_row,
            ..
        } => (
            Source::Parquet {
                url: url.clone(),
                row_groups: row_groups.clone(),
                skip: *skip,
                rows: head_rows,
                columns: columns.clone(),
                row_numbers: row_numbers.clone(),
                first_row: *first_row,
            },
            Source::Parquet {
                url: url.clone(),
                row_groups: row_groups.clone(),
                skip: skip + head_rows,
                rows: tail_rows,
                columns: columns.clone(),
                row_numbers: row_numbers.clone(),
                first_row: first_row + head_rows as u64,
            },
        ),
    };
    let (origin_head, origin_tail) = split_origin(&block.origin, head_rows);
    (
        SourceBlock {
            source: head,
            rows: head_rows,
            bytes: head_bytes,
            origin: origin_head,
        },
        SourceBlock {
            source: tail,
            rows: tail_rows,
            bytes: block.bytes - head_bytes,
            origin: origin_tail,
        },
    )
}

/// `count` blocks of equal rows (fewer when there are fewer rows), joining
/// the ends of neighbouring blocks (and files) where a block spans them.
pub(crate) fn rebalance(blocks: Vec<SourceBlock>, count: usize) -> Vec<SourceBlock> {
    let total: usize = blocks.iter().map(|b| b.rows).sum();
    if total == 0 {
        return blocks;
    }
    let count = count.clamp(1, total);
    let mut pieces: std::collections::VecDeque<SourceBlock> = blocks.into();
    let mut balanced = Vec::with_capacity(count);
    for index in 0..count {
        let want = total * (index + 1) / count - total * index / count;
        let mut parts = Vec::new();
        let mut have = 0;
        while have < want {
            let block = pieces.pop_front().expect("the rows add up");
            let block = if block.rows > want - have {
                let (head, tail) = split_at(&block, want - have);
                pieces.push_front(tail);
                head
            } else {
                block
            };
            have += block.rows;
            parts.push(block);
        }
        balanced.push(join(parts));
    }
    balanced
}

/// One block reading `parts` one after another.
fn join(mut parts: Vec<SourceBlock>) -> SourceBlock {
    if parts.len() == 1 {
        return parts.pop().expect("one");
    }
    SourceBlock {
        rows: parts.iter().map(|p| p.rows).sum(),
        bytes: parts.iter().map(|p| p.bytes).sum(),
        origin: parts
            .iter()
            .map(|p| p.origin.as_str())
            .collect::<Vec<_>>()
            .join(" + "),
        source: Source::Concat(parts.into_iter().map(|p| (p.source, p.rows)).collect()),
    }
}

/// "f rows a..b" split after `head` rows.
fn split_origin(origin: &str, head: usize) -> (String, String) {
    let parsed = origin.rsplit_once(" rows ").and_then(|(what, range)| {
        let (a, b) = range.split_once("..")?;
        Some((what, a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
    });
    match parsed {
        Some((what, a, b)) => (
            format!("{what} rows {a}..{}", a + head),
            format!("{what} rows {}..{b}", a + head),
        ),
        None => (origin.to_string(), origin.to_string()),
    }
}

/// Keeps the first `limit` rows.
pub(crate) fn truncate(blocks: &mut Vec<SourceBlock>, limit: usize) {
    let mut left = limit;
    blocks.retain_mut(|block| {
        if left == 0 {
            return false;
        }
        if block.rows > left {
            let (head, _) = split_at(block, left);
            *block = head;
        }
        left -= block.rows;
        true
    });
}

/// Range blocks of `rows_per_block`.
pub(crate) fn range_blocks(n: i64, rows_per_block: usize) -> Vec<SourceBlock> {
    let step = rows_per_block.max(1) as i64;
    (0..n)
        .step_by(step as usize)
        .map(|start| {
            let end = (start + step).min(n);
            SourceBlock {
                source: Source::Range { start, end },
                rows: (end - start) as usize,
                bytes: ((end - start) * 8) as u64,
                origin: format!("range rows {start}..{end}"),
            }
        })
        .collect()
}

/// A listed file: its store, its metadata, its URL for messages.
pub type ListedFile = (Arc<dyn ObjectStore>, ObjectMeta, String);

/// Which file names a listing keeps.
type NameFilter = Box<dyn Fn(&str) -> bool>;

/// The files one URL names, sorted, each with its store and display URL: a
/// file, a directory of `*.parquet` (skipping hidden and `_`-prefixed names),
/// or `dir/*.parquet`-style globs.
pub async fn list_files(url: &str) -> Result<Vec<ListedFile>> {
    let io = |what: &str, e: object_store::Error| Error::Io(format!("cannot {what} {url}: {e}"));
    let glob = split_glob(url).is_some();
    let (location, filter): (Location, NameFilter) = match split_glob(url) {
        Some((dir, pattern)) => {
            let pattern = pattern.to_string();
            (
                location::resolve(dir)?,
                Box::new(move |name: &str| glob_match(&pattern, name)),
            )
        }
        None => {
            let location = location::resolve(url)?;
            if location.path.as_ref() != "" {
                match location.store.head(&location.path).await {
                    Ok(meta) => {
                        let display = location.display.clone();
                        return Ok(vec![(location.store, meta, display)]);
                    }
                    // Not an object: maybe a directory (or an S3 prefix).
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(io("read", e)),
                }
            }
            if let Some(local) = &location.local
                && !local.is_dir()
            {
                return Err(Error::Invalid(format!(
                    "input {} does not exist",
                    location.display
                )));
            }
            (location, Box::new(is_data_file))
        }
    };
    let listing = location
        .store
        .list_with_delimiter(Some(&location.path))
        .await
        .map_err(|e| io("list", e))?;
    let mut files: Vec<_> = listing
        .objects
        .into_iter()
        .filter(|meta| meta.location.filename().is_some_and(&filter))
        .map(|meta| {
            let display = location.display_of(&meta.location);
            (location.store.clone(), meta, display)
        })
        .collect();
    // An output of ours is the parts its manifest names: a part a dead
    // write left beside them is not part of it.
    if !glob && let Some(listed) = crate::sink::manifest_parts(&location).await? {
        files.retain(|(_, meta, _)| {
            meta.location
                .filename()
                .is_some_and(|name| listed.iter().any(|l| l == name))
        });
    }
    if files.is_empty() {
        return Err(Error::Invalid(if glob {
            format!("input {url} matched no files")
        } else {
            format!("input {url} has no *.parquet files")
        }));
    }
    files.sort_by(|a, b| a.1.location.cmp(&b.1.location));
    Ok(files)
}

/// `*.parquet`, skipping hidden and `_`-prefixed files (`_SUCCESS`,
/// temporaries), as Spark and pyarrow do.
pub fn is_data_file(name: &str) -> bool {
    name.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with('_')
}

/// Splits `dir/pattern` when the last path segment holds `*` or `?`.
pub fn split_glob(url: &str) -> Option<(&str, &str)> {
    let (dir, last) = match url.rsplit_once('/') {
        Some(("", last)) => ("/", last),
        Some((dir, last)) => (dir, last),
        None => (".", url),
    };
    last.contains(['*', '?']).then_some((dir, last))
}

/// `*` matches any run of characters, `?` any one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Backtracking over the last `*` seen: linear for one star.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(blocks: &[SourceBlock]) -> Vec<String> {
        blocks.iter().map(|b| b.origin.clone()).collect()
    }

    #[test]
    fn the_first_block_can_be_cut_small() {
        let mut blocks = range_blocks(1_000, 500);
        small_first_block(&mut blocks, 64);
        assert_eq!(
            ranges(&blocks),
            [
                "range rows 0..64",
                "range rows 64..500",
                "range rows 500..1000"
            ]
        );
        // A first block already that small stays as it is.
        let mut blocks = range_blocks(100, 50);
        small_first_block(&mut blocks, 64);
        assert_eq!(blocks.len(), 2);
    }
}
