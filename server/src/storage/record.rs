//! The record format both stores use: one key per record, each value
//! `[crc32 of (key ‖ payload): u32 LE][payload: bincode]`.
//!
//! Keys: `meta/format`, `meta/voter`, `meta/promised`, `meta/chosen_through`,
//! `meta/truncated_through`, `meta/members`, and
//! `log/<slot as 8 big-endian bytes>` (so key order is slot order). The checksum covers the
//! key too, so a record copied to the wrong key is caught as well as a flipped bit.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use chubby_protocol::{Ballot, MemberSets, Slot, Value};

use super::{Loaded, StorageError};
use crate::paxos::{DurableState, LogEntry, PersistBatch};

/// Largest record payload accepted on load (a log entry holds at most one frame's value).
pub const RECORD_BYTES_MAX: usize = 2 << 20;
const CODEC: Configuration<LittleEndian, Varint, Limit<RECORD_BYTES_MAX>> =
    config::standard().with_limit::<RECORD_BYTES_MAX>();

/// Version of this format, stored under `meta/format`. Version 2 added membership
/// changes to values and `meta/members`; a version-1 store is refused as unknown.
pub const FORMAT_VERSION: u32 = 2;

pub(crate) const KEY_FORMAT: &[u8] = b"meta/format";
const KEY_VOTER: &[u8] = b"meta/voter";
const KEY_PROMISED: &[u8] = b"meta/promised";
const KEY_CHOSEN: &[u8] = b"meta/chosen_through";
const KEY_TRUNCATED: &[u8] = b"meta/truncated_through";
const KEY_MEMBERS: &[u8] = b"meta/members";
const LOG_PREFIX: &[u8] = b"log/";

/// The key of a log slot.
#[must_use]
pub fn log_key(slot: Slot) -> Vec<u8> {
    let mut key = LOG_PREFIX.to_vec();
    key.extend_from_slice(&slot.0.to_be_bytes());
    key
}

fn seal(key: &[u8], payload: Vec<u8>) -> Vec<u8> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(&payload);
    let mut record = hasher.finalize().to_le_bytes().to_vec();
    record.extend(payload);
    record
}

fn encode<T: bincode::Encode>(key: &[u8], value: &T) -> (Vec<u8>, Vec<u8>) {
    let payload = bincode::encode_to_vec(value, CODEC).expect("encoding to a Vec cannot fail");
    (key.to_vec(), seal(key, payload))
}

/// The `(key, record)` pairs that write `batch`; with `format` the format marker too.
#[must_use]
pub fn encode_batch(batch: &PersistBatch, format: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut records = Vec::with_capacity(batch.record_count() + 1);
    if format {
        records.push(encode(KEY_FORMAT, &FORMAT_VERSION));
    }
    if let Some(voter) = batch.voter {
        records.push(encode(KEY_VOTER, &voter));
    }
    if let Some(promised) = batch.promised {
        records.push(encode(KEY_PROMISED, &promised));
    }
    // An entry at or below the batch's truncation point is deleted by the same batch.
    let truncated = batch.truncate_through.unwrap_or(Slot::ZERO);
    for (slot, entry) in batch.entries.iter().filter(|(s, _)| *s > truncated) {
        records.push(encode(&log_key(*slot), &(entry.ballot, &entry.value)));
    }
    if let Some(chosen) = batch.chosen_through {
        records.push(encode(KEY_CHOSEN, &chosen));
    }
    if let Some(through) = batch.truncate_through {
        records.push(encode(KEY_TRUNCATED, &through));
    }
    if let Some(members) = &batch.members {
        records.push(encode(KEY_MEMBERS, members));
    }
    records
}

/// The keys a batch deletes, as an inclusive key range (`log/1 ..= log/<through>`), to be
/// removed in the same atomic write as [`encode_batch`]'s records.
#[must_use]
pub fn deleted_range(batch: &PersistBatch) -> Option<std::ops::RangeInclusive<Vec<u8>>> {
    batch
        .truncate_through
        .filter(|t| *t > Slot::ZERO)
        .map(|t| log_key(Slot(1))..=log_key(t))
}

fn printable(key: &[u8]) -> String {
    match key.strip_prefix(LOG_PREFIX) {
        Some(rest) if rest.len() == 8 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(rest);
            format!("log/{}", u64::from_be_bytes(be))
        }
        _ => String::from_utf8_lossy(key).into_owned(),
    }
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        key: printable(key),
        reason: reason.into(),
    }
}

/// Verifies a record's checksum and decodes its payload.
///
/// # Errors
/// [`StorageError::Corrupt`] on a short record, a checksum mismatch, a payload that does not
/// decode, or trailing bytes.
pub fn open<T: bincode::Decode<()>>(key: &[u8], record: &[u8]) -> Result<T, StorageError> {
    if record.len() < 4 {
        return Err(corrupt(key, "record shorter than its checksum"));
    }
    let (crc, payload) = record.split_at(4);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if hasher.finalize() != stored {
        return Err(corrupt(key, "checksum mismatch"));
    }
    let (value, used) = bincode::decode_from_slice::<T, _>(payload, CODEC)
        .map_err(|e| corrupt(key, format!("undecodable: {e}")))?;
    if used != payload.len() {
        return Err(corrupt(key, "trailing bytes"));
    }
    Ok(value)
}

/// Rebuilds the durable state from every stored `(key, record)`, verifying each checksum.
///
/// # Errors
/// [`StorageError::Corrupt`] for the first bad record, an unknown key or format version, or
/// a state that fails [`DurableState::validate`].
pub fn decode_all<'a, I>(records: I) -> Result<Loaded, StorageError>
where
    I: IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>>,
    I::IntoIter: 'a,
{
    let mut state = DurableState::default();
    let mut format = None;
    let mut any = false;
    for item in records {
        let (key, record) = item?;
        any = true;
        match key.as_slice() {
            KEY_FORMAT => format = Some(open::<u32>(&key, &record)?),
            KEY_VOTER => state.voter = open(&key, &record)?,
            KEY_PROMISED => state.promised = open::<Ballot>(&key, &record)?,
            KEY_CHOSEN => state.chosen_through = open::<Slot>(&key, &record)?,
            KEY_TRUNCATED => state.truncated_through = open::<Slot>(&key, &record)?,
            KEY_MEMBERS => state.members = open::<MemberSets>(&key, &record)?,
            k if k.starts_with(LOG_PREFIX) && k.len() == LOG_PREFIX.len() + 8 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&k[LOG_PREFIX.len()..]);
                let (ballot, value) = open::<(Ballot, Value)>(&key, &record)?;
                state
                    .log
                    .insert(Slot(u64::from_be_bytes(be)), LogEntry { ballot, value });
            }
            _ => return Err(corrupt(&key, "unknown key")),
        }
    }
    match format {
        None if !any => Ok(Loaded::Empty),
        None => Err(corrupt(KEY_FORMAT, "records present but no format marker")),
        Some(FORMAT_VERSION) => {
            state
                .validate()
                .map_err(|reason| corrupt(KEY_CHOSEN, reason))?;
            Ok(Loaded::State(state))
        }
        Some(v) => Err(corrupt(KEY_FORMAT, format!("unknown format version {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chubby_protocol::NodeId;

    fn batch() -> PersistBatch {
        PersistBatch {
            voter: Some(true),
            promised: Some(Ballot {
                round: 3,
                node: NodeId(2),
            }),
            chosen_through: Some(Slot(1)),
            entries: vec![(
                Slot(1),
                LogEntry {
                    ballot: Ballot::ZERO,
                    value: Value::commands(vec![b"x".to_vec()]),
                },
            )],
            truncate_through: None,
            members: Some(MemberSets {
                sets: vec![(Slot(65), vec![NodeId(1), NodeId(2)])],
                addrs: Vec::new(),
                complete_through: Slot(3),
            }),
        }
    }

    #[test]
    fn round_trips_a_batch() {
        let records = encode_batch(&batch(), true);
        let Loaded::State(state) = decode_all(records.into_iter().map(Ok)).unwrap() else {
            panic!("empty")
        };
        let mut expected = DurableState::default();
        expected.apply(&batch());
        assert_eq!(state, expected);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let records = encode_batch(&batch(), true);
        for (i, (key, record)) in records.iter().enumerate() {
            for byte in 0..record.len() {
                let mut bad = records.clone();
                bad[i].1[byte] ^= 0x10;
                let err = decode_all(bad.into_iter().map(Ok)).unwrap_err();
                assert!(
                    matches!(err, StorageError::Corrupt { .. }),
                    "{key:?} byte {byte}: {err}"
                );
            }
        }
    }

    #[test]
    fn a_record_under_the_wrong_key_is_detected() {
        let mut records = encode_batch(&batch(), true);
        let promised = records.iter().position(|(k, _)| k == KEY_PROMISED).unwrap();
        records[promised].0 = KEY_VOTER.to_vec();
        assert!(decode_all(records.into_iter().map(Ok)).is_err());
    }

    #[test]
    fn empty_is_empty_and_unformatted_data_is_corrupt() {
        assert!(matches!(
            decode_all(Vec::new().into_iter()),
            Ok(Loaded::Empty)
        ));
        let records = encode_batch(&batch(), false);
        assert!(decode_all(records.into_iter().map(Ok)).is_err());
    }
}
