//! A deterministic English-like sample corpus, so embedding jobs and
//! benchmarks can run without downloading a data set.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Rows per Parquet row group of the sample corpus.
const ROW_GROUP_ROWS: usize = 2_000;
const MIN_WORDS: usize = 5;
const MAX_WORDS: usize = 60;

const DETERMINERS: &[&str] = &[
    "the", "a", "this", "that", "every", "some", "no", "each", "another", "our", "their", "my",
    "your", "his", "her", "its",
];

const ADJECTIVES: &[&str] = &[
    "small", "large", "old", "new", "quiet", "loud", "bright", "dark", "warm", "cold", "quick",
    "slow", "happy", "sad", "early", "late", "long", "short", "green", "blue", "red", "white",
    "black", "heavy", "light", "strange", "simple", "careful", "busy", "empty", "full", "young",
    "ancient", "gentle", "rough", "clean", "dirty", "famous", "hidden", "local", "distant",
    "modern", "narrow", "wide", "open", "broken", "golden", "wooden", "tired", "curious",
];

#[rustfmt::skip]
const NOUNS: &[&str] = &[
    "man", "woman", "child", "dog", "cat", "bird", "house", "city", "river", "mountain", "road",
    "tree", "garden", "window", "door", "table", "book", "letter", "teacher", "student", "doctor",
    "farmer", "market", "village", "train", "ship", "car", "bridge", "forest", "field", "song",
    "story", "friend", "family", "country", "school", "office", "morning", "evening", "night",
    "winter", "summer", "storm", "lake", "island", "kitchen", "bottle", "picture", "machine",
    "engine", "letterbox", "painter", "king", "queen", "soldier", "baker", "stone", "wall", "tower",
    "station", "museum", "library", "hospital", "restaurant", "computer", "phone", "message",
    "question", "answer", "idea", "plan", "problem", "reason", "voice", "hand", "face", "heart",
    "mind", "world", "sun", "moon", "star", "sky", "sea", "beach", "hill", "valley", "horse",
    "boat", "cup", "coffee", "bread", "apple", "flower", "chair", "lamp", "clock", "key", "box",
    "map", "coat", "hat", "shoe", "neighbour", "stranger", "crowd",
];

#[rustfmt::skip]
const VERBS: &[&str] = &[
    "sees", "finds", "builds", "carries", "watches", "opens", "closes", "follows", "paints",
    "reads", "writes", "remembers", "forgets", "visits", "crosses", "leaves", "loves", "hates",
    "needs", "wants", "brings", "sells", "buys", "cleans", "fixes", "breaks", "holds", "keeps",
    "moves", "pulls", "pushes", "covers", "answers", "asks", "teaches", "helps", "calls", "meets",
    "hears", "describes", "explains", "chooses", "changes", "protects", "discovers", "draws",
    "enters", "shares", "counts", "guards",
];

#[rustfmt::skip]
const ADVERBS: &[&str] = &[
    "slowly", "quickly", "quietly", "carefully", "often", "rarely", "always", "never", "again",
    "suddenly", "finally", "gladly", "softly", "easily", "barely",
];

const PREPOSITIONS: &[&str] = &[
    "in", "on", "near", "behind", "under", "over", "beside", "through", "across", "around", "with",
    "without", "after", "before", "inside", "outside", "along", "toward",
];

const CONJUNCTIONS: &[&str] = &["and", "but", "so", "while", "because", "although", "yet"];

/// splitmix64: tiny, fast and good enough to make varied sentences; avoids
/// pulling `rand` into the CLI for a sample corpus.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is negligible for small `n`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

/// `rows` deterministic English-like sentences of 5 to 60 words (uniformly),
/// each capitalised and ending in a period. The same `(rows, seed)` always
/// gives the same sentences, and a longer corpus extends a shorter one.
pub fn sample_sentences(rows: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64(seed);
    (0..rows).map(|_| sentence(&mut rng)).collect()
}

fn sentence(rng: &mut SplitMix64) -> String {
    let target = MIN_WORDS + rng.below(MAX_WORDS - MIN_WORDS + 1);
    let mut words: Vec<String> = Vec::with_capacity(target + 12);
    while words.len() < target {
        if !words.is_empty() {
            // Clauses are joined by a conjunction, usually after a comma.
            if rng.chance(60)
                && let Some(last) = words.last_mut()
            {
                last.push(',');
            }
            words.push(rng.pick(CONJUNCTIONS).to_string());
        }
        clause(rng, &mut words);
    }
    words.truncate(target);
    // A cut clause may end on "the" or "in": end on a noun instead.
    let last = words.last_mut().expect("at least five words");
    if last.ends_with(',') {
        last.pop();
    }
    if !NOUNS.contains(&last.as_str()) && !ADVERBS.contains(&last.as_str()) {
        *last = rng.pick(NOUNS).to_string();
    }
    let mut text = words.join(" ");
    text.push('.');
    // Every word in the vocabulary is lowercase ASCII.
    text[..1].make_ascii_uppercase();
    text
}

/// determiner [adjective] noun [adverb] verb determiner [adjective] noun
/// [preposition determiner noun]
fn clause(rng: &mut SplitMix64, words: &mut Vec<String>) {
    noun_phrase(rng, words);
    if rng.chance(20) {
        words.push(rng.pick(ADVERBS).to_string());
    }
    words.push(rng.pick(VERBS).to_string());
    noun_phrase(rng, words);
    if rng.chance(50) {
        words.push(rng.pick(PREPOSITIONS).to_string());
        noun_phrase(rng, words);
    }
}

fn noun_phrase(rng: &mut SplitMix64, words: &mut Vec<String>) {
    words.push(rng.pick(DETERMINERS).to_string());
    if rng.chance(45) {
        words.push(rng.pick(ADJECTIVES).to_string());
    }
    words.push(rng.pick(NOUNS).to_string());
}

/// Writes `rows` sample sentences to a Parquet file at `path` with columns
/// `id: Int64` (0..rows) and `text: Utf8`, in zstd-compressed row groups of
/// 2,000 rows. Writes to a temporary name first, so `path` never holds a
/// partial file.
pub fn write_sample_corpus(path: &Path, rows: usize, seed: u64) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let result = write_corpus_file(&tmp, rows, seed).and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write the sample corpus {}", path.display()))
}

fn write_corpus_file(path: &Path, rows: usize, seed: u64) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_size(ROW_GROUP_ROWS)
        .build();
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))?;
    // One PRNG across batches, so the corpus does not depend on the batch size.
    let mut rng = SplitMix64(seed);
    let mut start = 0;
    while start < rows {
        let len = ROW_GROUP_ROWS.min(rows - start);
        let ids = Int64Array::from_iter_values(start as i64..(start + len) as i64);
        let texts: StringArray = (0..len).map(|_| Some(sentence(&mut rng))).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(texts)])?;
        writer.write(&batch)?;
        start += len;
    }
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn sentences_are_deterministic_and_sized() {
        let a = sample_sentences(2_000, 7);
        assert_eq!(a, sample_sentences(2_000, 7));
        assert_ne!(a, sample_sentences(2_000, 8));
        // A longer corpus extends a shorter one with the same seed.
        assert_eq!(sample_sentences(10, 7), a[..10]);
        let counts: Vec<usize> = a.iter().map(|s| s.split_whitespace().count()).collect();
        assert!(counts.iter().all(|&n| (MIN_WORDS..=MAX_WORDS).contains(&n)));
        // Uniform over 5..=60: both ends show up in 2,000 draws.
        assert!(counts.contains(&MIN_WORDS) && counts.contains(&MAX_WORDS));
        for s in &a {
            assert!(s.ends_with('.') && !s.ends_with(",."), "{s}");
            assert!(s.chars().next().unwrap().is_ascii_uppercase(), "{s}");
        }
        assert!(a.iter().any(|s| s.contains(", ")));
        let distinct: std::collections::HashSet<&String> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
    }

    #[test]
    fn corpus_file_has_ids_texts_and_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/corpus.parquet");
        write_sample_corpus(&path, 4_500, 3).unwrap();
        assert!(!dir.path().join("nested/corpus.parquet.tmp").exists());
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.file_metadata().num_rows(), 4_500);
        let groups: Vec<i64> = metadata.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, vec![2_000, 2_000, 500]);
        assert_eq!(
            metadata.row_group(0).column(1).compression(),
            Compression::ZSTD(ZstdLevel::default())
        );
    }
}
