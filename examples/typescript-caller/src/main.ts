// Runs the worker until SIGTERM or SIGINT. Configured by environment: TEMPORAL_ADDRESS (host:port),
// TEMPORAL_NAMESPACE, TASK_QUEUE, STIGMER_HANDSHAKE_ADDRESS (host:port of `stigmer-handshake serve`),
// STIGMER_HANDSHAKE_API_KEY (a key with the create scope), STIGMER_PROTO_DIR (the repository's proto/).
import { NativeConnection, Worker } from '@temporalio/worker';
import * as activities from './activities';

async function main(): Promise<void> {
  const connection = await NativeConnection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233' });
  const worker = await Worker.create({
    connection,
    namespace: process.env.TEMPORAL_NAMESPACE ?? 'default',
    taskQueue: process.env.TASK_QUEUE ?? 'typescript-callers',
    workflowsPath: require.resolve('./workflows'),
    activities,
  });
  console.log('worker ready');
  await worker.run();
  await connection.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
