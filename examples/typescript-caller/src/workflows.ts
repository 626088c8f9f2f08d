// The parent workflow: one caller activity per child; the child's typed result, or its typed failure.
import { ActivityFailure, ApplicationFailure, proxyActivities } from '@temporalio/workflow';
import type * as activities from './activities';

export interface AgentAnswer {
  answer: string;
  tokens_used: number;
  sources: string[];
}

export type ParentResult =
  | { ok: true; answer: AgentAnswer }
  | { ok: false; message: string; type: string | undefined | null; nonRetryable: boolean | undefined | null };

const { createAgentExecution } = proxyActivities<typeof activities>({
  startToCloseTimeout: '10 minutes',
  retry: { maximumAttempts: 1 },
});

export async function agentParent(request: activities.AgentRequest): Promise<ParentResult> {
  try {
    const answer = (await createAgentExecution(request)) as unknown as AgentAnswer;
    return { ok: true, answer };
  } catch (err) {
    if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure) {
      return { ok: false, message: err.cause.message, type: err.cause.type, nonRetryable: err.cause.nonRetryable };
    }
    throw err;
  }
}
