import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the agents to a server started with
// `cargo run -p agents-server` (127.0.0.1:8787).
export default defineConfig({
  plugins: [react()],
  server: {
    host: "127.0.0.1",
    proxy: { "/agents": { target: "ws://127.0.0.1:8787", ws: true } },
  },
  build: { target: "es2022" },
});
