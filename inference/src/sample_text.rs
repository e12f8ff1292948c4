//! A deterministic English-like sample corpus, so embedding jobs, tests and
//! benchmarks can run without downloading a data set (`photon
//! sample-corpus` writes it as Parquet).

use crate::split_mix::SplitMix64;

/// Fewest words in a sentence.
pub const MIN_WORDS: usize = 5;
/// Most words in a sentence.
pub const MAX_WORDS: usize = 60;

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

/// `rows` deterministic English-like sentences of 5 to 60 words (uniformly),
/// each capitalised and ending in a period. The same `(rows, seed)` always
/// gives the same sentences, and a longer corpus extends a shorter one.
pub fn sample_sentences(rows: usize, seed: u64) -> Vec<String> {
    SampleSentences::new(seed).take(rows).collect()
}

/// The endless stream [`sample_sentences`] takes its sentences from.
pub struct SampleSentences(SplitMix64);

impl SampleSentences {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64(seed))
    }
}

impl Iterator for SampleSentences {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        Some(sentence(&mut self.0))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
