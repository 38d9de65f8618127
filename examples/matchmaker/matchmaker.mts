// A matchmaker's side of vmpool, typed from the OpenAPI document the service serves.
//
// The types in generated/vmpool.d.ts come from the running service:
//   npx openapi-typescript http://localhost:7071/api/openapi.json -o examples/matchmaker/generated/vmpool.d.ts
// and the client is openapi-fetch, which checks every path, parameter, body and answer against
// them. Build and run (scripts/clients.sh does both against a local vmpool):
//   npx tsc -p examples/matchmaker && node target/matchmaker/matchmaker.mjs http://localhost:7071 [function key]
//
// It plays a match's whole life: CreateVM with an Idempotency-Key (one per ticket), GetVM until
// the VM is Running, room reports and a mark, a reclaim, GetAvailableVMs page by page, and the
// answers that mean "fix your request". Any surprise throws, so the process exits non-zero.

import createClient from "openapi-fetch";
import type { components, paths } from "./generated/vmpool.js";

type Vm = components["schemas"]["VmView"];
type CreateAction = components["schemas"]["CreateAction"];
type ReportAction = components["schemas"]["ReportAction"];
type MarkAction = components["schemas"]["MarkAction"];
type ErrorEnvelope = components["schemas"]["ErrorEnvelope"];

// The little of Node this example uses (no @types/node needed).
declare const process: { argv: string[]; exitCode?: number };

const baseUrl = process.argv[2] ?? "http://localhost:7071";
const functionKey = process.argv[3];

const vmpool = createClient<paths>({
  baseUrl,
  // Under Azure Functions (and standalone with VMPOOL_API_KEY), every route but the probe and
  // the document wants a function key.
  headers: functionKey === undefined ? {} : { "x-functions-key": functionKey },
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function check(ok: boolean, what: string): asserts ok {
  if (!ok) {
    throw new Error(`unexpected: ${what}`);
  }
}

/// Sends `send` again while vmpool answers 503 ("wait and retry"), after the Retry-After it
/// gives. Any other answer is the caller's to read.
async function retrying<T extends { response: Response }>(send: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const result = await send();
    if (result.response.status !== 503 || attempt === 10) {
      return result;
    }
    const seconds = Number(result.response.headers.get("Retry-After") ?? "1");
    await sleep(1000 * (Number.isFinite(seconds) ? seconds : 1));
  }
}

/// What CreateVM's action means for the match: the switch is exhaustive, so a new action in
/// the document fails to compile here until it is handled.
function meaning(action: CreateAction): string {
  switch (action) {
    case "reclaimed":
      return "a VM we had released, back in use (Running now)";
    case "standby":
      return "a warm VM (Running now)";
    case "claimedCreating":
      return "a VM of the warm buffer that is still booting";
    case "started":
      return "a deallocated VM being started";
    case "created":
      return "a new VM being created";
    default: {
      const unknown: never = action;
      throw new Error(`unknown CreateVM action ${String(unknown)}`);
    }
  }
}

function reported(action: ReportAction): string {
  switch (action) {
    case "recorded":
      return "rooms recorded";
    case "deallocating":
      return "no rooms left on a released VM: it is being deallocated";
    case "stale":
      return "older than a report already applied: nothing changed";
    default: {
      const unknown: never = action;
      throw new Error(`unknown report action ${String(unknown)}`);
    }
  }
}

function marked(action: MarkAction): string {
  switch (action) {
    case "marked":
      return "released";
    case "alreadyMarked":
      return "already released";
    default: {
      const unknown: never = action;
      throw new Error(`unknown mark action ${String(unknown)}`);
    }
  }
}

function describeError(error: ErrorEnvelope | undefined, response: Response): string {
  return `${response.status} ${error?.error.code ?? "?"}: ${error?.error.message ?? ""}`;
}

/// CreateVM for one ticket: the same key on every retry of this ticket, so a lost answer
/// never costs a second VM.
async function createVm(ticket: string): Promise<{ vm: Vm; action: CreateAction; status: number }> {
  const { data, error, response } = await retrying(() =>
    vmpool.POST("/api/CreateVM", { params: { header: { "Idempotency-Key": ticket } } }),
  );
  if (data === undefined) {
    throw new Error(`CreateVM for ${ticket}: ${describeError(error, response)}`);
  }
  console.log(`CreateVM ${ticket}: ${response.status} ${data.action} (${meaning(data.action)}): ${data.vm.vmId}`);
  return { vm: data.vm, action: data.action, status: response.status };
}

/// GetVM until the VM is Running: a 202 from CreateVM means "your VM is coming".
async function untilRunning(vmId: string): Promise<Vm> {
  for (let polls = 0; polls < 120; polls++) {
    const { data, error, response } = await retrying(() =>
      vmpool.GET("/api/GetVM", { params: { query: { vmId } } }),
    );
    if (data === undefined) {
      throw new Error(`GetVM ${vmId}: ${describeError(error, response)}`);
    }
    if (data.vm.state === "Running") {
      check(data.vm.publicIp !== null, "a Running VM has its public IP");
      console.log(`GetVM ${vmId}: Running at ${data.vm.publicIp}, ports [${data.vm.ports.join(", ")}]`);
      return data.vm;
    }
    check(data.vm.state === "Creating", `${vmId} is ${data.vm.state} while we wait`);
    await sleep(500);
  }
  throw new Error(`${vmId} is not Running after 60 s`);
}

async function report(vmId: string, rooms: number): Promise<ReportAction> {
  const { data, error, response } = await retrying(() =>
    vmpool.POST("/api/ReportGameRoomsNumber", { body: { vmId, rooms } }),
  );
  if (data === undefined) {
    throw new Error(`ReportGameRoomsNumber ${vmId}: ${describeError(error, response)}`);
  }
  console.log(`ReportGameRoomsNumber ${vmId} ${rooms}: ${data.action} (${reported(data.action)})`);
  return data.action;
}

async function mark(vmId: string): Promise<MarkAction> {
  const { data, error, response } = await retrying(() =>
    vmpool.POST("/api/MarkVMForDeallocation", { body: { vmId } }),
  );
  if (data === undefined) {
    throw new Error(`MarkVMForDeallocation ${vmId}: ${describeError(error, response)}`);
  }
  console.log(`MarkVMForDeallocation ${vmId}: ${data.action} (${marked(data.action)})`);
  return data.action;
}

/// Every Running VM, a page at a time: each page's continuation goes straight back.
async function availableVms(limit: number): Promise<{ vms: Vm[]; pages: number }> {
  const vms: Vm[] = [];
  let continuation: string | undefined = undefined;
  let pages = 0;
  do {
    const { data, error, response } = await retrying(() =>
      vmpool.GET("/api/GetAvailableVMs", { params: { query: { limit, continuation } } }),
    );
    if (data === undefined) {
      throw new Error(`GetAvailableVMs: ${describeError(error, response)}`);
    }
    vms.push(...data.vms);
    continuation = data.continuation;
    pages++;
  } while (continuation !== undefined);
  return { vms, pages };
}

/// What the types refuse: each line below is marked as expected to fail, and tsc fails on a
/// marked line that compiles, so this checks that the document is as strict as the service.
/// Never called.
export function refusedByTheTypes(): void {
  // @ts-expect-error rooms is required
  void vmpool.POST("/api/ReportGameRoomsNumber", { body: { vmId: "vmpool-a" } });
  // @ts-expect-error rooms is never null
  void vmpool.POST("/api/ReportGameRoomsNumber", { body: { vmId: "vmpool-a", rooms: null } });
  // @ts-expect-error vmId is required
  void vmpool.POST("/api/MarkVMForDeallocation", { body: {} });
  // @ts-expect-error the Idempotency-Key is a string, never null
  void vmpool.POST("/api/CreateVM", { params: { header: { "Idempotency-Key": null } } });
  // @ts-expect-error GetVM wants a vmId
  void vmpool.GET("/api/GetVM", { params: { query: {} } });
  // @ts-expect-error a misspelled action
  const misspelled: CreateAction = "reclaim";
  // @ts-expect-error MarkVMForDeallocation never answers a CreateVM action
  const wrongOperation: MarkAction = "created";
  // @ts-expect-error no such operation
  void vmpool.GET("/api/GetVMs", {});
  void misspelled;
  void wrongOperation;
}

async function main(): Promise<void> {
  const run = crypto.randomUUID();

  // A match needs a server: one Idempotency-Key per ticket.
  const first = await createVm(`ticket-${run}-1`);
  check(first.status === 202 && first.action === "created", "a new VM in an empty pool");
  // The answer was lost, say: the retry with the same key gets the same VM and action.
  const again = await createVm(`ticket-${run}-1`);
  check(again.vm.vmId === first.vm.vmId && again.action === first.action, "the same VM for the same key");

  const vm = await untilRunning(first.vm.vmId);
  check((await report(vm.vmId, 3)) === "recorded", "rooms recorded");
  // The query string works as well as the body.
  const byQuery = await vmpool.POST("/api/ReportGameRoomsNumber", {
    params: { query: { vmId: vm.vmId, rooms: 2 } },
  });
  check(byQuery.data?.vm.rooms === 2, "rooms from the query string");

  // The match ends; the next match takes the same VM back before it is deallocated.
  check((await mark(vm.vmId)) === "marked", "marked");
  const reclaimed = await createVm(`ticket-${run}-2`);
  check(
    reclaimed.status === 200 && reclaimed.action === "reclaimed" && reclaimed.vm.vmId === vm.vmId,
    "the released VM reclaimed",
  );

  // Two more matches, then the list of Running VMs one per page.
  const more = [await createVm(`ticket-${run}-3`), await createVm(`ticket-${run}-4`)];
  for (const m of more) {
    await untilRunning(m.vm.vmId);
  }
  const listed = await availableVms(1);
  const ids = listed.vms.map((v) => v.vmId);
  for (const want of [vm.vmId, ...more.map((m) => m.vm.vmId)]) {
    check(ids.includes(want), `${want} is listed as available`);
  }
  check(listed.pages >= 3, "one VM per page");
  console.log(`GetAvailableVMs: ${ids.length} VMs over ${listed.pages} pages`);

  // The last match ends: released, its rooms close, and it is deallocated.
  check((await mark(vm.vmId)) === "marked", "marked again");
  check((await report(vm.vmId, 0)) === "deallocating", "0 rooms deallocates a released VM");

  // "Fix your request": 400 for a bad input, 404 for a VM that does not exist.
  const bad = await vmpool.POST("/api/ReportGameRoomsNumber", { body: { vmId: vm.vmId, rooms: -1 } });
  check(bad.response.status === 400 && bad.error?.error.code === "InvalidInput", "rooms -1 is refused");
  console.log(`ReportGameRoomsNumber rooms -1: ${describeError(bad.error, bad.response)}`);
  const missing = await vmpool.GET("/api/GetVM", { params: { query: { vmId: `vmpool-none-${run.slice(0, 8)}` } } });
  check(missing.response.status === 404 && missing.error?.error.code === "NotFound", "an unknown VM is 404");
  console.log(`GetVM of an unknown VM: ${describeError(missing.error, missing.response)}`);

  console.log("matchmaker example: the whole lifecycle went as the document says");
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
