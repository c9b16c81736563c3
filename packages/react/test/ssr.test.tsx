// @vitest-environment node
// Server-side rendering: importing the hook touches no `window`, rendering
// creates an inert client and connects nothing.
import { renderToString } from "react-dom/server";
import { expect, it } from "vitest";
import { useAgent } from "../src/index.js";

function Counter() {
  const agent = useAgent<{ count: number }>({ agent: "counter-agent", name: "ssr" });
  return (
    <p>
      {agent.readyState}:{agent.state?.count ?? "none"}:{agent.url || "no-socket"}
    </p>
  );
}

it("renders on the server without a window and without connecting", () => {
  expect(typeof window).toBe("undefined");
  expect(renderToString(<Counter />)).toBe("<p>3<!-- -->:<!-- -->none<!-- -->:<!-- -->no-socket</p>");
});
