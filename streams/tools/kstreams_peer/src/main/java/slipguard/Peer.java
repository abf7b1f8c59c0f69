package slipguard;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.JoinWindows;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.StreamJoined;

/**
 * slipguard's join as a Kafka Streams application: payments leftJoin orders by order_id
 * within +-timeout (grace after it), each record decoded as JSON; a payment the window
 * closes without an order is written to the recovery topic. exactly_once_v2, the
 * commit interval and state stores (RocksDB, changelogged) as the bench's join has them.
 *
 * args: bootstrap application.id payments orders recovery timeout_ms grace_ms commit_ms
 */
public final class Peer {
  private static final ObjectMapper JSON = new ObjectMapper();

  private static JsonNode decode(String value) {
    try {
      return JSON.readTree(value);
    } catch (Exception e) {
      return null;
    }
  }

  public static void main(String[] args) throws InterruptedException {
    Properties p = new Properties();
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, args[1]);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(args[7]));
    p.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/slipguard-kstreams-" + args[1]);
    p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    Duration timeout = Duration.ofMillis(Long.parseLong(args[5]));
    Duration grace = Duration.ofMillis(Long.parseLong(args[6]));
    Serde<String> s = Serdes.String();

    StreamsBuilder b = new StreamsBuilder();
    KStream<String, JsonNode> payments = b.stream(args[2], Consumed.with(s, s)).mapValues(Peer::decode)
        .filter((k, v) -> v != null && "succeeded".equals(v.path("status").asText()));
    KStream<String, JsonNode> orders = b.stream(args[3], Consumed.with(s, s)).mapValues(Peer::decode)
        .filter((k, v) -> v != null);
    payments.leftJoin(orders, (pay, order) -> order == null ? pay.toString() : null,
                      JoinWindows.ofTimeDifferenceAndGrace(timeout, grace),
                      StreamJoined.with(s, new org.apache.kafka.common.serialization.Serdes.WrapperSerde<>(
                          new JsonSer(), new JsonDe()), new org.apache.kafka.common.serialization.Serdes.WrapperSerde<>(
                          new JsonSer(), new JsonDe())))
        .filter((k, v) -> v != null)
        .to(args[4], Produced.with(s, s));

    KafkaStreams streams = new KafkaStreams(b.build(), p);
    CountDownLatch done = new CountDownLatch(1);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      streams.close(Duration.ofSeconds(30));
      done.countDown();
    }));
    streams.start();
    done.await();
  }

  /** JSON in the join's state stores, as the records came. */
  public static final class JsonSer implements org.apache.kafka.common.serialization.Serializer<JsonNode> {
    @Override
    public byte[] serialize(String topic, JsonNode data) {
      try {
        return data == null ? null : JSON.writeValueAsBytes(data);
      } catch (Exception e) {
        throw new RuntimeException(e);
      }
    }
  }

  public static final class JsonDe implements org.apache.kafka.common.serialization.Deserializer<JsonNode> {
    @Override
    public JsonNode deserialize(String topic, byte[] data) {
      try {
        return data == null ? null : JSON.readTree(data);
      } catch (Exception e) {
        throw new RuntimeException(e);
      }
    }
  }
}
