//! Kafka as a pipeline's source and sink: `[source.kafka]`, `[sink.kafka]`
//! and the `kafka://` form of `--input` / `--output`.
//!
//! ```toml
//! [source.kafka]
//! bootstrap = "127.0.0.1:9092"   # bootstrap.servers
//! topic = "payments"             # or topics = ["a", "b"]
//! group = "eddy-payments"        # the consumer group (offsets are committed in it)
//! time = "timestamp"             # event time from the message timestamp (ms)
//! until_end = false              # stop once every partition is read to its end
//! mode = "single"                # or "group": processes of one group share the partitions
//! partitioner = "murmur2"        # group mode: how producers placed keys ("murmur2" or "crc32")
//! instance = "a"                 # group mode: this process's name (default: kept in the state directory)
//! standby = false                # group mode: keep a warm copy of the partitions others own
//! properties = { "security.protocol" = "SASL_SSL" }   # passed to librdkafka
//!
//! [sink.kafka]
//! topic = "totals"               # bootstrap and properties default to the source's
//! delivery = "exactly-once"      # or "at-least-once" (no transactions)
//! dead_letter_topic = "eddy-dead" # optional: dead letters to a topic, in the same transactions
//! ```
//!
//! On the command line: `--input 'kafka://HOST:PORT/TOPIC?group=G'` and
//! `--output 'kafka://HOST:PORT/TOPIC'`, with the same names as query
//! parameters (`until_end=true`, `time=timestamp`, `mode=group`,
//! `partitioner=crc32`, `instance=NAME`, `standby=true`, `delivery=at-least-once`,
//! `dead_letter_topic=T`, `transactional_id=T`). Client properties are given
//! in the pipeline file only.

use std::collections::BTreeMap;

use eddy_kafka::partition::Partitioner;
use serde::Deserialize;

use super::PipelineError;

/// A Kafka input: the topics a pipeline consumes, in one consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaInput {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// The topics read (every partition of each).
    pub topics: Vec<String>,
    /// The consumer group: the offsets committed with each transaction.
    pub group: String,
    /// Route by this field of the JSON value (the pipeline's key field,
    /// when one is given); `None`: by the message key.
    pub key_field: Option<String>,
    /// The event time is the message's timestamp (ms since the epoch),
    /// unless the pipeline names a time field of the value.
    pub timestamp_time: bool,
    /// Stop once every partition has been read to the end it had when the
    /// run reached it (a backfill, a test); otherwise run until stopped.
    pub until_end: bool,
    /// librdkafka properties for the consumer, passed through unchanged
    /// (security settings included).
    pub properties: Vec<(String, String)>,
    /// Group mode: this process is one of several with the same group,
    /// which share the partitions (the broker assigns them); each
    /// partition's state is kept in changelog topics and follows the
    /// partition. Otherwise this process reads every partition.
    pub group_mode: bool,
    /// Group mode: how the input's producers placed keys in partitions (a
    /// key's state lives with its partition; a record found elsewhere is
    /// dead-lettered).
    pub partitioner: Partitioner,
    /// Group mode: this process's name among the group's (its
    /// transactional id is `eddy-<group>-<instance>`); `None`: one made up
    /// at the first start and kept in the state directory.
    pub instance: Option<String>,
    /// Group mode: keep a warm copy of the state of the partitions other
    /// processes own, by following their changelog topics, so that taking
    /// one over reads only what its copy lacks.
    pub standby: bool,
}

/// How a Kafka output's records reach its readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Outputs and the consumed offsets in one Kafka transaction per
    /// checkpoint: a `read_committed` reader sees each output once.
    ExactlyOnce,
    /// No transactions: after a crash the outputs since the last
    /// checkpoint are written again.
    AtLeastOnce,
}

/// A Kafka output: the topic emitted events are produced to, keyed by the
/// emitted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOutput {
    /// `bootstrap.servers` (default: the source's).
    pub bootstrap: String,
    /// The topic.
    pub topic: String,
    /// Exactly once (transactions) or at least once.
    pub delivery: Delivery,
    /// The producer's `transactional.id` (default `eddy-<group>`, or
    /// `eddy-<topic>` without a Kafka source): stable across restarts, so
    /// a restarted pipeline fences the one it replaces.
    pub transactional_id: Option<String>,
    /// Dead letters go to this topic (in the same transactions) instead of
    /// the dead-letter file.
    pub dead_letter_topic: Option<String>,
    /// librdkafka properties for the producer (default: the source's).
    pub properties: Vec<(String, String)>,
}

/// `[source.kafka]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceKafkaTable {
    bootstrap: Option<String>,
    topic: Option<String>,
    topics: Option<Vec<String>>,
    group: Option<String>,
    time: Option<String>,
    until_end: Option<bool>,
    mode: Option<String>,
    partitioner: Option<String>,
    instance: Option<String>,
    standby: Option<bool>,
    #[serde(default)]
    properties: BTreeMap<String, toml::Value>,
}

/// `[sink.kafka]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SinkKafkaTable {
    bootstrap: Option<String>,
    topic: Option<String>,
    delivery: Option<String>,
    transactional_id: Option<String>,
    dead_letter_topic: Option<String>,
    properties: Option<BTreeMap<String, toml::Value>>,
}

fn invalid(msg: String) -> PipelineError {
    PipelineError::Invalid(msg)
}

/// Client properties as strings (TOML numbers and booleans as written).
fn properties(
    table: &BTreeMap<String, toml::Value>,
    at: &str,
) -> Result<Vec<(String, String)>, PipelineError> {
    table
        .iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(invalid(format!(
                        "{at} properties: `{k}` must be a string, number or boolean, not {}",
                        other.type_str()
                    )))
                }
            };
            Ok((k.clone(), v))
        })
        .collect()
}

fn check_topic(topic: &str, at: &str) -> Result<(), PipelineError> {
    // Kafka's own rule for topic names.
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{at}: `{topic}` is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`)"
        )))
    }
}

fn time_setting(v: Option<&str>, at: &str) -> Result<bool, PipelineError> {
    match v {
        None => Ok(false),
        Some("timestamp") => Ok(true),
        Some(other) => Err(invalid(format!(
            "{at}: time = \"{other}\": the only setting is \"timestamp\" (the message timestamp); a field of the value is `[source] time` / --time-field"
        ))),
    }
}

fn group_mode(v: Option<&str>, at: &str) -> Result<bool, PipelineError> {
    match v {
        None | Some("single") => Ok(false),
        Some("group") => Ok(true),
        Some(other) => Err(invalid(format!(
            "{at}: mode = \"{other}\": use \"single\" (this process reads every partition) or \"group\" (processes with the same group share them)"
        ))),
    }
}

fn partitioner(v: Option<&str>, at: &str) -> Result<Partitioner, PipelineError> {
    match v {
        None | Some("murmur2") => Ok(Partitioner::Murmur2),
        Some("crc32") => Ok(Partitioner::Crc32),
        Some(other) => Err(invalid(format!(
            "{at}: partitioner = \"{other}\": use \"murmur2\" (Java clients, Kafka Streams, Eddy) or \"crc32\" (librdkafka's default)"
        ))),
    }
}

fn instance(v: Option<String>, at: &str) -> Result<Option<String>, PipelineError> {
    match v {
        Some(i)
            if i.is_empty()
                || i.len() > 64
                || !i
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) =>
        {
            Err(invalid(format!(
                "{at}: instance = \"{i}\": use 1 to 64 of a-z, A-Z, 0-9, `.`, `_`, `-`"
            )))
        }
        v => Ok(v),
    }
}

fn delivery(v: Option<&str>, at: &str) -> Result<Delivery, PipelineError> {
    match v {
        None | Some("exactly-once") => Ok(Delivery::ExactlyOnce),
        Some("at-least-once") => Ok(Delivery::AtLeastOnce),
        Some(other) => Err(invalid(format!(
            "{at}: delivery = \"{other}\": use \"exactly-once\" or \"at-least-once\""
        ))),
    }
}

impl SourceKafkaTable {
    pub(super) fn build(&self) -> Result<KafkaInput, PipelineError> {
        let at = "[source.kafka]";
        let bootstrap = self.bootstrap.clone().ok_or_else(|| {
            invalid(format!(
                "{at}: `bootstrap` (the brokers, host:port) is missing"
            ))
        })?;
        let topics = match (&self.topic, &self.topics) {
            (Some(t), None) => vec![t.clone()],
            (None, Some(ts)) if !ts.is_empty() => ts.clone(),
            (Some(_), Some(_)) => {
                return Err(invalid(format!("{at}: give `topic` or `topics`, not both")))
            }
            _ => return Err(invalid(format!("{at}: `topic` is missing"))),
        };
        for t in &topics {
            check_topic(t, at)?;
        }
        let group = self.group.clone().ok_or_else(|| {
            invalid(format!(
                "{at}: `group` (the consumer group the offsets are committed in) is missing"
            ))
        })?;
        if group.is_empty() {
            return Err(invalid(format!("{at}: `group` is empty")));
        }
        Ok(KafkaInput {
            bootstrap,
            topics,
            group,
            key_field: None,
            timestamp_time: time_setting(self.time.as_deref(), at)?,
            until_end: self.until_end.unwrap_or(false),
            properties: properties(&self.properties, at)?,
            group_mode: group_mode(self.mode.as_deref(), at)?,
            partitioner: partitioner(self.partitioner.as_deref(), at)?,
            instance: instance(self.instance.clone(), at)?,
            standby: self.standby.unwrap_or(false),
        })
    }
}

impl SinkKafkaTable {
    pub(super) fn build(&self, source: Option<&KafkaInput>) -> Result<KafkaOutput, PipelineError> {
        let at = "[sink.kafka]";
        let bootstrap = self
            .bootstrap
            .clone()
            .or_else(|| source.map(|s| s.bootstrap.clone()))
            .ok_or_else(|| {
                invalid(format!(
                    "{at}: `bootstrap` (the brokers, host:port) is missing"
                ))
            })?;
        let topic = self
            .topic
            .clone()
            .ok_or_else(|| invalid(format!("{at}: `topic` is missing")))?;
        check_topic(&topic, at)?;
        if let Some(t) = &self.dead_letter_topic {
            check_topic(t, &format!("{at} dead_letter_topic"))?;
        }
        let properties = match &self.properties {
            Some(p) => properties(p, at)?,
            None => source.map(|s| s.properties.clone()).unwrap_or_default(),
        };
        Ok(KafkaOutput {
            bootstrap,
            topic,
            delivery: delivery(self.delivery.as_deref(), at)?,
            transactional_id: self.transactional_id.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            properties,
        })
    }
}

/// A parsed `kafka://` address: the brokers, the topics and the query
/// parameters.
type Url = (String, Vec<String>, BTreeMap<String, String>);

/// A `kafka://BROKERS/TOPIC[,TOPIC]?name=value&...` address.
fn parse_url(s: &str, what: &str) -> Result<Url, PipelineError> {
    let rest = s.strip_prefix("kafka://").expect("checked by the caller");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (brokers, topics) = path.split_once('/').ok_or_else(|| {
        invalid(format!(
            "{what} `{s}`: write kafka://HOST:PORT/TOPIC (the topic is missing)"
        ))
    })?;
    if brokers.is_empty() {
        return Err(invalid(format!(
            "{what} `{s}`: the brokers (HOST:PORT) are missing"
        )));
    }
    let topics: Vec<String> = topics.split(',').map(str::to_string).collect();
    for t in &topics {
        check_topic(t, &format!("{what} `{s}`"))?;
    }
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        params.insert(k.to_string(), v.to_string());
    }
    Ok((brokers.to_string(), topics, params))
}

fn take_bool(
    params: &mut BTreeMap<String, String>,
    name: &str,
    what: &str,
) -> Result<bool, PipelineError> {
    match params.remove(name).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(invalid(format!("{what}: {name}={v}: use true or false"))),
    }
}

fn no_more(params: BTreeMap<String, String>, what: &str, known: &str) -> Result<(), PipelineError> {
    match params.keys().next() {
        None => Ok(()),
        Some(k) => Err(invalid(format!(
            "{what}: unknown parameter `{k}` (known: {known})"
        ))),
    }
}

/// Parses a `kafka://` input address.
pub(super) fn input_url(s: &str, file: Option<&KafkaInput>) -> Result<KafkaInput, PipelineError> {
    let what = "--input";
    let (bootstrap, topics, mut params) = parse_url(s, what)?;
    let group = params
        .remove("group")
        .or_else(|| file.map(|f| f.group.clone()))
        .ok_or_else(|| {
            invalid(format!(
                "{what} `{s}`: add ?group=NAME (the consumer group the offsets are committed in)"
            ))
        })?;
    let timestamp_time = match params.remove("time") {
        Some(t) => time_setting(Some(&t), what)?,
        None => file.is_some_and(|f| f.timestamp_time),
    };
    let until_end = take_bool(&mut params, "until_end", what)? || file.is_some_and(|f| f.until_end);
    let group_mode = match params.remove("mode") {
        Some(m) => group_mode(Some(&m), what)?,
        None => file.is_some_and(|f| f.group_mode),
    };
    let partitioner = match params.remove("partitioner") {
        Some(p) => partitioner(Some(&p), what)?,
        None => file.map_or(Partitioner::Murmur2, |f| f.partitioner),
    };
    let instance = match params.remove("instance") {
        Some(i) => instance(Some(i), what)?,
        None => file.and_then(|f| f.instance.clone()),
    };
    let standby = take_bool(&mut params, "standby", what)? || file.is_some_and(|f| f.standby);
    no_more(
        params,
        what,
        "group, time, until_end, mode, partitioner, instance, standby",
    )?;
    Ok(KafkaInput {
        bootstrap,
        topics,
        group,
        key_field: None,
        timestamp_time,
        until_end,
        properties: file.map(|f| f.properties.clone()).unwrap_or_default(),
        group_mode,
        partitioner,
        instance,
        standby,
    })
}

/// Parses a `kafka://` output address.
pub(super) fn output_url(
    s: &str,
    file: Option<&KafkaOutput>,
    source: Option<&KafkaInput>,
) -> Result<KafkaOutput, PipelineError> {
    let what = "--output";
    let (bootstrap, topics, mut params) = parse_url(s, what)?;
    if topics.len() != 1 {
        return Err(invalid(format!("{what} `{s}`: name one topic")));
    }
    let delivery = match params.remove("delivery") {
        Some(d) => delivery(Some(&d), what)?,
        None => file.map_or(Delivery::ExactlyOnce, |f| f.delivery),
    };
    let transactional_id = params
        .remove("transactional_id")
        .or_else(|| file.and_then(|f| f.transactional_id.clone()));
    let dead_letter_topic = params
        .remove("dead_letter_topic")
        .or_else(|| file.and_then(|f| f.dead_letter_topic.clone()));
    if let Some(t) = &dead_letter_topic {
        check_topic(t, what)?;
    }
    no_more(
        params,
        what,
        "delivery, transactional_id, dead_letter_topic",
    )?;
    Ok(KafkaOutput {
        bootstrap,
        topic: topics.into_iter().next().expect("one topic"),
        delivery,
        transactional_id,
        dead_letter_topic,
        properties: file
            .map(|f| f.properties.clone())
            .or_else(|| source.map(|s| s.properties.clone()))
            .unwrap_or_default(),
    })
}
