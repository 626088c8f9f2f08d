// The caller activity, as any Temporal SDK writes it: store the child execution with this activity's own
// task token through stigmer-handshake's gRPC `create`, then return "result pending". The parent
// workflow resumes when the child is settled (by a runner, a webhook or a person).
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CompleteAsyncError, Context } from '@temporalio/activity';

export interface AgentRequest {
  executionId: string;
  prompt: string;
}

const PROTO_DIR = process.env.STIGMER_PROTO_DIR ?? path.resolve(__dirname, '../../../proto');
const SERVICE = 'ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController';

function commandClient(): grpc.Client & Record<string, Function> {
  const definition = protoLoader.loadSync('ai/stigmer/agentic/agentexecution/v1/api.proto', {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition) as any;
  const Client = loaded.ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController;
  return new Client(process.env.STIGMER_HANDSHAKE_ADDRESS ?? '127.0.0.1:8080', grpc.credentials.createInsecure());
}

export async function createAgentExecution(request: AgentRequest): Promise<never> {
  const info = Context.current().info;
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${process.env.STIGMER_HANDSHAKE_API_KEY ?? ''}`);
  if (info.heartbeatTimeoutMs) {
    // The token does not carry the heartbeat timeout: the server's pump heartbeats well within it.
    metadata.set('stigmer-heartbeat-timeout-ms', String(info.heartbeatTimeoutMs));
  }
  const execution = {
    metadata: { id: request.executionId },
    spec: { agent_id: 'researcher', message: request.prompt },
    status: { callback_token: Buffer.from(info.taskToken) },
  };
  const client = commandClient();
  try {
    const created: any = await new Promise((resolve, reject) =>
      client.create(execution, metadata, { deadline: Date.now() + 30_000 }, (err: Error | null, reply: unknown) =>
        err ? reject(err) : resolve(reply),
      ),
    );
    // The answer never carries the token back.
    if (created.status.callback_token.length !== 0) throw new Error('create answered with the token');
  } finally {
    client.close();
  }
  throw new CompleteAsyncError();
}
