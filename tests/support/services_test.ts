/**
 * tests/support/services.ts, proved from the outside: a `deno test` of a file that needs MariaDB and
 * RabbitMQ, run with both pointed at a port where nothing listens, fails within seconds, once
 * per service, with a message naming the switch; with the switches off it passes, its
 * service tests ignored with the reason in their names.
 */
import assert from "node:assert/strict";
import { ROOT } from "./harness.ts";

/** A local port nothing listens on (it was free a moment ago). */
function deadPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/**
 * Runs `deno test` of `file` with the services at a dead port and `env`; the probe results
 * this process keeps in its environment are not passed on.
 */
async function denoTest(
  file: string,
  env: Record<string, string>,
): Promise<{ code: number; output: string; ms: number }> {
  const port = deadPort();
  const inherited = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([name]) => !name.startsWith("CARTD_TEST_")),
  );
  const started = Date.now();
  const result = await new Deno.Command(Deno.execPath(), {
    args: ["test", "--allow-all", "--trace-leaks=false", "--no-check", file],
    cwd: ROOT,
    env: {
      ...inherited,
      NO_COLOR: "1",
      CARTD_TEST_MYSQL_HOST: "127.0.0.1",
      CARTD_TEST_MYSQL_PORT: String(port),
      CARTD_TEST_AMQP_URL: `amqp://guest:guest@127.0.0.1:${port}/`,
      ...env,
    },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(120_000),
  }).output();
  const d = new TextDecoder();
  return {
    code: result.code,
    output: d.decode(result.stdout) + d.decode(result.stderr),
    ms: Date.now() - started,
  };
}

Deno.test("without MariaDB and RabbitMQ, the production tests fail at once, once per service, naming the switches", async () => {
  const { code, output, ms } = await denoTest("tests/e2e/production_test.ts", {});
  assert.notEqual(code, 0, output);
  assert.ok(ms < 15_000, `took ${ms} ms:\n${output}`);
  assert.match(output, /MariaDB at 127\.0\.0\.1:\d+ is unreachable/);
  assert.match(output, /set CARTD_TEST_MYSQL=off/);
  assert.match(output, /RabbitMQ at 127\.0\.0\.1:\d+ is unreachable/);
  assert.match(output, /set CARTD_TEST_AMQP=off/);
  assert.match(output, /FAILED \| \d+ passed \| 2 failed \| \d+ ignored/, output);
  assert.match(
    output,
    /kill -9 of a worker .* \[skipped: MariaDB unreachable, RabbitMQ unreachable\] \.\.\. ignored/,
  );
  assert.doesNotMatch(output, /ECONNREFUSED/);
});

Deno.test("CARTD_TEST_MYSQL=off and CARTD_TEST_AMQP=off skip those tests, saying so in their names", async () => {
  const { code, output } = await denoTest("tests/e2e/production_test.ts", {
    CARTD_TEST_MYSQL: "off",
    CARTD_TEST_AMQP: "off",
  });
  assert.equal(code, 0, output);
  assert.match(output, /ok \| \d+ passed \| 0 failed \| [1-9]\d* ignored/, output);
  assert.match(
    output,
    /start-up with the database unreachable .* \[skipped: CARTD_TEST_MYSQL=off\] \.\.\. ignored/,
  );
  assert.match(
    output,
    /compose\.yaml's environment .* \[skipped: CARTD_TEST_MYSQL=off, CARTD_TEST_AMQP=off\] \.\.\. ignored/,
  );
  assert.doesNotMatch(output, /is unreachable/);
});
