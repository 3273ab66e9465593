// Publish hookrelay events from Node (DESIGN §2): a confirm channel, persistent, mandatory.
// The event id is the idempotency key: a retry after a nack or a returned message republishes
// the SAME id, so merchants see one webhook-id. Usage: publish.mjs AMQP_URL PREFIX ACCOUNT COUNT
import amqp from "amqplib";
import { randomUUID } from "node:crypto";

const [url, prefix, account, count] = process.argv.slice(2);
const envelope = (type, data) => ({
  id: "evt_" + randomUUID().replaceAll("-", ""), type, account_id: account,
  created_at: new Date().toISOString().replace(/\.\d+Z$/, "Z"), data,
});

async function publish(channel, returned, event, attempts = 5) {
  const body = Buffer.from(JSON.stringify(event));
  const options = { persistent: true, mandatory: true, contentType: "application/json", messageId: event.id };
  for (let attempt = 1; ; attempt++) {
    returned.delete(event.id);
    try {
      // The callback form resolves on the broker's ack and rejects on its nack.
      await new Promise((ok, fail) =>
        channel.publish(`${prefix}.events`, event.type, body, options, (err) => (err ? fail(err) : ok())));
      // A returned message (no queue bound) arrives before its ack.
      if (!returned.has(event.id)) return;
      throw new Error("returned: unroutable");
    } catch (e) {
      if (attempt === attempts) throw e;
      console.error(`retrying ${event.id} after ${e.message}`);
      await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
    }
  }
}

const connection = await amqp.connect(url);
const channel = await connection.createConfirmChannel();
const returned = new Set();
channel.on("return", (msg) => returned.add(msg.properties.messageId));
for (let n = 0; n < Number(count); n++) {
  const event = envelope("payment.card.success", { n, amount: "10.00" });
  await publish(channel, returned, event);
  console.log(event.id);
}
await channel.close();
await connection.close();
