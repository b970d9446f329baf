// "Show code": the playground's current request as curl, Python (openai >= 1) and the
// legacy openai 0.28 SDK. The key is always an environment variable, never the real one.

const ENV = "OPENAI_API_KEY";

/** A JSON value as a Python literal (None/True/False, dicts and lists indented). */
export function py(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "None";
  if (typeof value === "string") return JSON.stringify(value);
  const inner = `${indent}    `;
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => inner + py(v, inner)).join(",\n")},\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${py(v, inner)}`)
    .join(",\n")},\n${indent}}`;
}

function kwargs(request) {
  return Object.entries(request).map(([k, v]) => `    ${k}=${py(v, "    ")},`).join("\n");
}

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

/** {curl, Python, "Python (openai 0.28)"} for a chat completions request. */
export function snippets(baseUrl, request) {
  const curl = [
    `curl ${shellQuote(`${baseUrl}/chat/completions`)} \\`,
    `  -H "Authorization: Bearer $${ENV}" \\`,
    "  -H \"Content-Type: application/json\" \\",
    `  -d ${shellQuote(JSON.stringify(request, null, 2))}`,
  ].join("\n");
  const reads = request.tools
    ? "message = response.choices[0].message\nprint(message.content)\nprint(message.tool_calls)"
    : "print(response.choices[0].message.content)";
  const python = [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${py(baseUrl)}, api_key=os.environ[${py(ENV)}])`,
    "",
    "response = client.chat.completions.create(",
    kwargs(request),
    ")",
    reads,
  ].join("\n");
  const legacyReads = request.tools
    ? "message = response[\"choices\"][0][\"message\"]\nprint(message.get(\"content\"))\n" +
      "print(message.get(\"tool_calls\"))"
    : "print(response[\"choices\"][0][\"message\"][\"content\"])";
  const legacy = [
    "# pip install 'openai==0.28.*'",
    "import os",
    "",
    "import openai",
    "",
    `openai.api_base = ${py(baseUrl)}`,
    `openai.api_key = os.environ[${py(ENV)}]`,
    "",
    "response = openai.ChatCompletion.create(",
    kwargs(request),
    ")",
    legacyReads,
  ].join("\n");
  return { curl, Python: python, "Python (openai 0.28)": legacy };
}
