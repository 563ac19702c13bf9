//! Topic creation: for tests and demos, and the changelog topics of a
//! pipeline in group mode ([`ensure_topic`]).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::Error;

/// Creates `topic` with `partitions` partitions and `replication` replicas
/// (1 on the test broker), waiting up to `timeout` for the broker.
pub async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(Error::kafka("admin client"))?;
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(Error::kafka(format!("creating topic `{topic}`")))?;
    for result in results {
        if let Err((topic, code)) = result {
            return Err(Error::CreateTopic { topic, code });
        }
    }
    Ok(())
}

/// Makes sure `topic` exists with `partitions` partitions: creates it with
/// the broker's default replication and `configs` (for example
/// `cleanup.policy=compact`) when missing; an existing one with another
/// partition count is an error that names both counts. Blocks the calling
/// thread (up to about `timeout` per call to the broker).
pub fn ensure_topic(
    properties: &[(String, String)],
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), String> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| format!("Kafka admin client: {e}"))?;
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("creating topic `{topic}`: {e}"))?;
    let results = rt
        .block_on(admin.create_topics([&new], &options))
        .map_err(|e| format!("creating topic `{topic}`: {e}"))?;
    for result in results {
        match result {
            Ok(_) => return Ok(()),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(format!("creating topic `{topic}`: {code}")),
        }
    }
    // It exists: check its partitions (once the broker describes them: a
    // topic another process just created may have none yet).
    let begun = std::time::Instant::now();
    let found = loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("describing topic `{topic}`: {e}"))?;
        let found = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        if found > 0 || begun.elapsed() > timeout {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if found != partitions {
        return Err(format!(
            "topic `{topic}` exists with {found} partition(s), but {partitions} are needed (one per input partition): delete it (the state it holds is lost) or give the pipeline another group"
        ));
    }
    Ok(())
}
