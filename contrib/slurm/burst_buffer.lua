--[[
Ferry's burst_buffer/lua script for Slurm (22.05, 23.02, 24.05): prestaging.

WHAT IT DOES
  A job script asks Ferry to move data before and after the job with lines in its
  leading comment block (before the first command):

    #!/bin/bash
    #SBATCH ...
    #FERRY stage_in [--optional] [--checksum] SRC DST
    #FERRY stage_out [--optional] SRC DST
    srun ./app "$FERRY_STAGED_1"

  SRC and DST are gfs://..., ferry://... or absolute local paths, without whitespace.
  %j stands for the job id, %% for a literal %; no other % sequence is accepted.
  Slurm keeps the job PENDING (Reason BurstBufferStageIn) while `ferry stage-in` runs,
  starts it when that succeeds, runs `ferry stage-out` after it ends, then
  `ferry stage teardown`. A failed stage-in holds the job; squeue shows as its reason
  "burst_buffer/lua: slurm_bb_data_in: <last line ferry printed>".

  Hooks:
    slurm_bb_job_process  at sbatch, inside slurmctld with its locks held: validates
                          the #FERRY lines in pure Lua (no processes, no network) and
                          rejects the job with "line N: ..." on the first problem,
                          including a #FERRY line after the first command (Slurm
                          would silently ignore it).
    slurm_bb_setup        records the job's uid/gid in FERRY_BB_STATE/JOBID.uid (for 22.05).
    slurm_bb_data_in      FERRY stage-in --job ID --script JOB_SCRIPT --uid UID
    slurm_bb_paths        pure Lua: FERRY_STAGED_<n>=DST (n-th stage_in) and
                          FERRY_STAGE_OUT_<n>=SRC (n-th stage_out) into the job's environment.
    slurm_bb_data_out     FERRY stage-out --job ID --script JOB_SCRIPT --uid UID
    slurm_bb_job_teardown FERRY stage teardown --job ID [--hurry]
    the others            succeed without doing anything (test_data_in/out report "done").
  FERRY is $FERRY_BIN or "ferry" (found on PATH). Its stdout and stderr are captured;
  exit status 0 is success, anything else fails the hook with the last non-empty
  output line as the message. Every call is logged to slurmctld's log (slurm.log_info).

INSTALLING (operators)
  1. Copy this file to burst_buffer.lua in the directory of slurm.conf
     (e.g. /etc/slurm/burst_buffer.lua), readable by SlurmUser.
  2. slurm.conf:          BurstBufferType=burst_buffer/lua
  3. burst_buffer.conf (same directory):
       Directive=FERRY                       # "#FERRY" lines are the directives
       Flags=DisablePersistent,TeardownFailure
       StageInTimeout=3600                   # seconds a stage-in may take
       StageOutTimeout=3600
       OtherTimeout=300                      # setup, teardown, pre/post run
     The key is "Directive" ("DirectivePrefix" is not a burst_buffer.conf key: slurmctld
     exits with a fatal error on it). Without Directive=FERRY, Slurm only hands jobs with
     "#BB_LUA" lines to this script and never calls any hook for "#FERRY" lines.
     If you change Directive, change DIRECTIVE below to match.
  4. Environment: create ferry-bb.env beside this file, one KEY=VALUE per line (the value
     is taken literally to the end of the line; '#' lines are comments), e.g.
       FERRY_BIN=/usr/local/bin/ferry
       FERRY_API=https://ferry.example.org:8443
       FERRY_TOKEN_FILE=/etc/ferry/slurm.token
       FERRY_CA=/etc/ferry/ca.pem
       PATH=/usr/local/bin:/usr/bin:/bin
       FERRY_BB_STATE=/var/spool/ferry-bb
     Every pair is passed to the ferry command (it wins over slurmctld's own environment,
     which the hooks also inherit, e.g. from systemd's Environment=). FERRY_BB_ENV_FILE in
     slurmctld's environment names another file instead.
  5. FERRY_BB_STATE (default /var/spool/ferry-bb) must be writable by SlurmUser; it
     holds one tiny file per job with a pending/running burst buffer (JOBID.uid).
  6. `scontrol reconfigure` (or restart slurmctld). The hooks run as SlurmUser on the
     controller host, so ferry must be installed there, and reach the Ferry API.

  Root cannot use burst buffers in Slurm: jobs of uid 0 with #FERRY lines are refused.
  A job whose only #FERRY lines come after its first command has no burst buffer for
  Slurm at all, so no hook (not even job_process) sees it and it would run unstaged.
  Ferry ships job_submit.lua (beside this file) for that case: with
  JobSubmitPlugins=lua it refuses at sbatch any #FERRY line after the first command,
  by the same rule and with the same message as job_process (see its top comment).

WHAT SLURM DOES AROUND THE HOOKS (seen on 22.05.8), SO WHAT ferry MUST TOLERATE
  - A failed stage-in: Slurm holds the job (Priority=0, `scontrol release` retries the
    stage-in) and runs teardown with --hurry right away.
  - scancel during stage-in: Slurm kills the stage-in's process group and runs teardown
    --hurry; teardown may start a few milliseconds before the kill has landed (under load,
    longer). The daemon then answers the old hook's polls "failed" and stages nothing again
    (it remembers the torn-down job for an hour; the hook's next run clears that).
  - slurmctld stopped (SIGTERM) during stage-in: the stage-in is killed; after the restart
    Slurm runs teardown --hurry, defers the job about 60 s, then setup and stage-in again.
    slurmctld killed (SIGKILL): the stage-in dies with it, and after the restart the
    stage-in simply runs again, without a teardown first. So stage-in, stage-out and
    teardown must be idempotent, and teardown must accept a job it never saw.
  - A failed stage-out does not fail the job (it ends COMPLETED); the message is in
    `scontrol show job`'s Reason and SystemComment. Teardown follows either way.
  - Only the leading comment block counts, as Slurm scans it: empty lines are skipped,
    and the first line not starting with '#' ends it (a line of only blanks too).

VERSIONS (the hooks take varargs, so one file serves all three; the 22.05 behaviour
below was checked on 22.05.8, the 23.02/24.05 argument lists come from Slurm's source
and etc/burst_buffer.lua.example)
  22.05  slurm_bb_job_process(script), data_in/data_out/pre_run/post_run(id, script),
         teardown(id, script, hurry), paths(id, script, path_file): no uid. The uid
         comes from slurm_bb_setup(id, uid, gid, ...) via FERRY_BB_STATE/ID.uid, and if
         that file is missing from `scontrol show job -o ID` (UserId=name(uid)).
  23.02  The same hooks get uid and gid after their usual arguments: used directly.
  24.05  Also requires slurm_bb_test_data_in/out (defined here; data_in and data_out
         are synchronous, so they report "done": slurm.SUCCESS with an empty string),
         and may pass a job_info table last: ignored.
  JOB_SCRIPT: job_process, paths, pre_run and teardown get the job's own script
  (StateSaveLocation/hash.N/job.ID/script). When a #FERRY line contains '%', setup,
  data_in, post_run and data_out get Slurm's symbol-replaced copy instead: a memfd
  /proc/<slurmctld pid>/fd/<n> holding "#!/bin/sh" and the #FERRY lines only, %j
  already replaced. This script replaces %j/%% itself only in files that are not
  under /proc/ (so never twice).
--]]

-- Must equal "Directive=" in burst_buffer.conf.
local DIRECTIVE = "FERRY"
local DEFAULT_STATE_DIR = "/var/spool/ferry-bb"
local ENV_FILE_NAME = "ferry-bb.env"
local EXIT_MARK = "__FERRY_BB_EXIT_STATUS="
local REASON_CHARS_MAX = 400

local TAG = "burst_buffer.lua"

local function log_info(fmt, ...)
	slurm.log_info(TAG .. ": " .. fmt, ...)
end

local function log_error(fmt, ...)
	if slurm.log_error then
		slurm.log_error(TAG .. ": " .. fmt, ...)
	else
		slurm.log_info(TAG .. ": error: " .. fmt, ...)
	end
end

-- 'text' for /bin/sh, whatever it contains.
local function shell_quote(s)
	return "'" .. string.gsub(tostring(s), "'", "'\\''") .. "'"
end

-- Directory of this file (Slurm loads it with luaL_loadfile, so source is "@path").
local function script_dir()
	if not (debug and debug.getinfo) then
		return nil
	end
	local info = debug.getinfo(1, "S")
	local src = info and info.source or ""
	if string.sub(src, 1, 1) ~= "@" then
		return nil
	end
	return string.match(string.sub(src, 2), "^(.*)/[^/]*$")
end

-- The KEY=VALUE pairs of ferry-bb.env, in file order; read on every call.
local function load_env_file()
	local pairs_list, by_name = {}, {}
	local path = os.getenv("FERRY_BB_ENV_FILE")
	if not path or path == "" then
		local dir = script_dir()
		if dir then
			path = dir .. "/" .. ENV_FILE_NAME
		end
	end
	local f = path and io.open(path, "r")
	if not f then
		return pairs_list, by_name
	end
	local n = 0
	for line in f:lines() do
		n = n + 1
		line = string.gsub(line, "\r$", "")
		if not string.match(line, "^%s*#") and not string.match(line, "^%s*$") then
			local k, v = string.match(line, "^%s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
			if k then
				if by_name[k] == nil then
					pairs_list[#pairs_list + 1] = k
				end
				by_name[k] = v
			else
				log_error("%s line %d is not KEY=VALUE; ignored", path, n)
			end
		end
	end
	f:close()
	return pairs_list, by_name
end

local function env_value(by_name, name)
	local v = by_name[name]
	if v == nil or v == "" then
		v = os.getenv(name)
	end
	if v == "" then
		return nil
	end
	return v
end

local function state_dir(by_name)
	return env_value(by_name, "FERRY_BB_STATE") or DEFAULT_STATE_DIR
end

-- A uid/gid argument as Slurm passes it ("1001"), or nil.
local function id_arg(v)
	if type(v) == "number" then
		return tostring(math.floor(v))
	end
	if type(v) == "string" and string.match(v, "^%d+$") then
		return v
	end
	return nil
end

local function is_symbol_replaced(path)
	return type(path) == "string" and string.match(path, "^/proc/%d+/fd/%d+$") ~= nil
end

--------------------------------------------------------------------------------
-- Directive parsing (pure Lua: used inside slurmctld by job_process and paths)
--------------------------------------------------------------------------------

local VERBS = {
	stage_in = { ["--optional"] = true, ["--checksum"] = true },
	stage_out = { ["--optional"] = true },
}

local function valid_location(s)
	if string.sub(s, 1, 1) == "/" then
		return true
	end
	local scheme, rest = string.match(s, "^([a-z]+)://(.*)$")
	return (scheme == "gfs" or scheme == "ferry") and rest ~= nil and rest ~= ""
end

local function check_percent(s)
	-- Only %j and %% (Slurm replaces more, but paths must agree on every version).
	local i = 1
	while true do
		local p = string.find(s, "%", i, true)
		if not p then
			return true
		end
		local c = string.sub(s, p + 1, p + 1)
		if c ~= "j" and c ~= "%" then
			return false, "%" .. c
		end
		i = p + 2
	end
end

local function substitute(s, job_id)
	return (string.gsub(s, "%%([j%%])", function(c)
		if c == "j" then
			return tostring(job_id)
		end
		return "%"
	end))
end

-- Parses one "#FERRY ..." line (n = its line number). Returns a table or nil, message.
local function parse_directive(line, n)
	local rest = string.sub(line, #DIRECTIVE + 2)
	if rest ~= "" and not string.match(rest, "^%s") then
		return nil, string.format("line %d: unknown directive '#%s%s' (expected '#%s stage_in' or '#%s stage_out')",
			n, DIRECTIVE, string.match(rest, "^%S*"), DIRECTIVE, DIRECTIVE)
	end
	if string.find(line, "\r", 1, true) then
		return nil, string.format("line %d: carriage return in a #%s line (DOS line endings)", n, DIRECTIVE)
	end
	if string.match(line, "\\$") then
		return nil, string.format("line %d: line continuation ('\\' at the end) is not supported in #%s lines", n, DIRECTIVE)
	end
	if string.find(line, "\\\\", 1, true) then
		return nil, string.format("line %d: '\\\\' is not allowed in #%s lines", n, DIRECTIVE)
	end
	local words = {}
	for w in string.gmatch(rest, "%S+") do
		words[#words + 1] = w
	end
	local verb = words[1]
	if not verb then
		return nil, string.format("line %d: #%s needs stage_in or stage_out", n, DIRECTIVE)
	end
	local allowed = VERBS[verb]
	if not allowed then
		return nil, string.format("line %d: unknown #%s verb '%s' (expected stage_in or stage_out)", n, DIRECTIVE, verb)
	end
	local d = { verb = verb, line = n, optional = false, checksum = false }
	local positional = {}
	for i = 2, #words do
		local w = words[i]
		if string.sub(w, 1, 1) == "-" then
			if not allowed[w] then
				return nil, string.format("line %d: unknown option '%s' for %s", n, w, verb)
			end
			if w == "--optional" then
				d.optional = true
			elseif w == "--checksum" then
				d.checksum = true
			end
		else
			positional[#positional + 1] = w
		end
	end
	if #positional ~= 2 then
		return nil, string.format("line %d: %s needs SRC and DST, got %d argument%s", n, verb,
			#positional, #positional == 1 and "" or "s")
	end
	for i, what in ipairs({ "SRC", "DST" }) do
		local p = positional[i]
		local ok, bad = check_percent(p)
		if not ok then
			return nil, string.format("line %d: %s '%s' contains '%s'; only %%j (job id) and %%%% are allowed", n, what, p, bad)
		end
		if not valid_location(p) then
			return nil, string.format("line %d: %s '%s' is not gfs://..., ferry://... or an absolute path", n, what, p)
		end
	end
	d.src, d.dst = positional[1], positional[2]
	return d
end

-- Reads a job script and returns its directives (in order) or nil, message.
-- The leading block is what Slurm scans: empty lines are skipped, and the first line
-- that does not start with '#' ends it (a line of only spaces does too).
local function parse_script(path)
	if type(path) ~= "string" or path == "" then
		return nil, "no job script given"
	end
	local f, err = io.open(path, "r")
	if not f then
		return nil, "cannot read the job script: " .. tostring(err)
	end
	local content = f:read("*a") or ""
	f:close()
	local directives = {}
	local in_block = true
	local blank_end -- line number, when a line of only blanks ended the block
	local n = 0
	local prefix = "#" .. DIRECTIVE
	for line in string.gmatch(content .. "\n", "([^\n]*)\n") do
		n = n + 1
		if in_block then
			if line == "" then
				-- skipped by Slurm
			elseif string.sub(line, 1, 1) == "#" then
				if string.sub(line, 1, #prefix) == prefix then
					local d, msg = parse_directive(line, n)
					if not d then
						return nil, msg
					end
					directives[#directives + 1] = d
				end
			else
				in_block = false
				if not string.match(line, "%S") then
					blank_end = n
				end
			end
		end
		if not in_block and string.match(line, "^%s*#" .. DIRECTIVE .. "%f[%s%z]") then
			if blank_end then
				return nil, string.format("line %d: #%s directive after line %d, which holds only blanks and so ends Slurm's directive block, would be ignored by Slurm; empty line %d or move the directive above",
					n, DIRECTIVE, blank_end, blank_end)
			end
			return nil, string.format("line %d: #%s directive after the first command would be ignored by Slurm; move it above",
				n, DIRECTIVE)
		end
	end
	return directives
end

--------------------------------------------------------------------------------
-- Running ferry (only from the asynchronous hooks, in slurmscriptd's children)
--------------------------------------------------------------------------------

local function one_line(s)
	s = string.gsub(s, "[%c]", " ")
	s = string.gsub(s, "^%s+", "")
	s = string.gsub(s, "%s+$", "")
	if #s > REASON_CHARS_MAX then
		s = string.sub(s, 1, REASON_CHARS_MAX - 3) .. "..."
	end
	return s
end

-- Runs FERRY with args; returns slurm.SUCCESS or slurm.ERROR, message.
local function run_ferry(hook, job_id, args, label)
	label = label or args[1]
	local names, by_name = load_env_file()
	local ferry = env_value(by_name, "FERRY_BIN") or "ferry"
	local words = { shell_quote(ferry) }
	for _, a in ipairs(args) do
		words[#words + 1] = shell_quote(a)
	end
	local command = table.concat(words, " ")
	local assignments = {}
	for _, k in ipairs(names) do
		assignments[#assignments + 1] = k .. "=" .. shell_quote(by_name[k])
	end
	local env_prefix = ""
	if #assignments > 0 then
		env_prefix = "export " .. table.concat(assignments, " ") .. "; "
	end
	log_info("%s JobId=%s: running %s", hook, tostring(job_id), command)

	local started = os.time()
	local p = io.popen("exec </dev/null 2>&1; " .. env_prefix .. command .. "; echo " .. EXIT_MARK .. "$?", "r")
	if not p then
		log_error("%s JobId=%s: cannot start the shell", hook, tostring(job_id))
		return slurm.ERROR, hook .. ": cannot start " .. ferry
	end
	local output = p:read("*a") or ""
	p:close()

	local status
	local last = ""
	for line in string.gmatch(output, "[^\n]+") do
		local s = string.match(line, "^" .. EXIT_MARK .. "(%d+)$")
		if s then
			status = tonumber(s)
		elseif string.match(line, "%S") then
			last = line
		end
	end
	last = one_line(last)
	local elapsed = os.time() - started
	if status == 0 then
		log_info("%s JobId=%s: %s succeeded in %ds", hook, tostring(job_id), label, elapsed)
		return slurm.SUCCESS, ""
	end
	if status == nil then
		log_error("%s JobId=%s: %s ended without an exit status after %ds; output: %s", hook, tostring(job_id),
			label, elapsed, last)
		return slurm.ERROR, (last ~= "" and last) or (ferry .. " " .. label .. " was interrupted")
	end
	if status == 127 and last == "" then
		last = ferry .. ": command not found"
	end
	if last == "" then
		last = string.format("%s %s exited with status %d", ferry, label, status)
	end
	log_error("%s JobId=%s: %s exited with status %d after %ds: %s", hook, tostring(job_id), label, status,
		elapsed, last)
	return slurm.ERROR, last
end

--------------------------------------------------------------------------------
-- The job's uid on 22.05 (no uid argument): recorded by slurm_bb_setup.
--------------------------------------------------------------------------------

local function uid_file(dir, job_id)
	return dir .. "/" .. tostring(job_id) .. ".uid"
end

local function save_ids(job_id, uid, gid)
	local _, by_name = load_env_file()
	local dir = state_dir(by_name)
	local path = uid_file(dir, job_id)
	local f = io.open(path, "w")
	if not f then
		os.execute("mkdir -p -m 0755 " .. shell_quote(dir) .. " >/dev/null 2>&1")
		f = io.open(path, "w")
	end
	if not f then
		log_error("setup JobId=%s: cannot write %s (FERRY_BB_STATE); the uid will come from scontrol",
			tostring(job_id), path)
		return
	end
	f:write(uid, " ", gid or "", "\n")
	f:close()
end

local function forget_ids(job_id)
	local _, by_name = load_env_file()
	os.remove(uid_file(state_dir(by_name), job_id))
end

local function job_uid(job_id, uid_from_slurm)
	local uid = id_arg(uid_from_slurm)
	if uid then
		return uid
	end
	local _, by_name = load_env_file()
	local f = io.open(uid_file(state_dir(by_name), job_id), "r")
	if f then
		local line = f:read("*l") or ""
		f:close()
		uid = string.match(line, "^(%d+)")
		if uid then
			return uid
		end
	end
	if string.match(tostring(job_id), "^%d+$") then
		local p = io.popen("scontrol show job -o " .. tostring(job_id) .. " 2>/dev/null", "r")
		if p then
			local out = p:read("*a") or ""
			p:close()
			uid = string.match(out, "UserId=[^%s(]*%((%d+)%)")
			if uid then
				return uid
			end
		end
	end
	return nil
end

local function stage(hook, verb, job_id, job_script, uid_from_slurm)
	local uid = job_uid(job_id, uid_from_slurm)
	if not uid then
		log_error("%s JobId=%s: cannot determine the job's uid", hook, tostring(job_id))
		return slurm.ERROR, "ferry burst buffer: cannot determine the uid of job " .. tostring(job_id)
	end
	return run_ferry(hook, job_id, { verb, "--job", tostring(job_id), "--script", tostring(job_script), "--uid", uid })
end

--------------------------------------------------------------------------------
-- The hooks. Every argument Slurm passes is a string. Extra arguments of newer
-- versions land in "...".
--------------------------------------------------------------------------------

-- Synchronous, in slurmctld with locks held: pure Lua only.
function slurm_bb_job_process(job_script, ...)
	local directives, msg = parse_script(job_script)
	if not directives then
		log_info("job_process %s: rejected: %s", tostring(job_script), msg)
		return slurm.ERROR, msg
	end
	log_info("job_process %s: %d #%s directive(s)", tostring(job_script), #directives, DIRECTIVE)
	return slurm.SUCCESS
end

-- Synchronous: no pools (Slurm does not account any burst buffer space).
function slurm_bb_pools(...)
	return slurm.SUCCESS
end

function slurm_bb_job_teardown(job_id, job_script, hurry, ...)
	log_info("teardown JobId=%s hurry=%s", tostring(job_id), tostring(hurry))
	local args = { "stage", "teardown", "--job", tostring(job_id) }
	if hurry == true or hurry == "true" then
		args[#args + 1] = "--hurry"
	end
	local rc, msg = run_ferry("teardown", job_id, args, "stage teardown")
	if rc == slurm.SUCCESS then
		forget_ids(job_id)
	end
	return rc, msg
end

function slurm_bb_setup(job_id, uid, gid, pool, bb_size, job_script, ...)
	log_info("setup JobId=%s uid=%s gid=%s", tostring(job_id), tostring(uid), tostring(gid))
	if id_arg(uid) then
		save_ids(job_id, id_arg(uid), id_arg(gid))
	end
	return slurm.SUCCESS
end

function slurm_bb_data_in(job_id, job_script, uid, ...)
	log_info("data_in JobId=%s script=%s", tostring(job_id), tostring(job_script))
	return stage("data_in", "stage-in", job_id, job_script, uid)
end

-- 24.05+: data_in is synchronous, so stage-in is done when this is called.
function slurm_bb_test_data_in(job_id, ...)
	return slurm.SUCCESS, ""
end

function slurm_bb_real_size(job_id, ...)
	return slurm.SUCCESS
end

-- Synchronous, in slurmctld with locks held: pure Lua only.
function slurm_bb_paths(job_id, job_script, path_file, ...)
	local directives, msg = parse_script(job_script)
	if not directives then
		log_error("paths JobId=%s: %s", tostring(job_id), msg)
		return slurm.ERROR, msg
	end
	local replace = not is_symbol_replaced(job_script)
	local lines, n_in, n_out = {}, 0, 0
	for _, d in ipairs(directives) do
		if d.verb == "stage_in" then
			n_in = n_in + 1
			lines[#lines + 1] = "FERRY_STAGED_" .. n_in .. "=" .. (replace and substitute(d.dst, job_id) or d.dst)
		else
			n_out = n_out + 1
			lines[#lines + 1] = "FERRY_STAGE_OUT_" .. n_out .. "=" .. (replace and substitute(d.src, job_id) or d.src)
		end
	end
	if #lines > 0 then
		local f, err = io.open(path_file, "a")
		if not f then
			log_error("paths JobId=%s: cannot write %s: %s", tostring(job_id), tostring(path_file), tostring(err))
			return slurm.ERROR, "cannot write the burst buffer path file"
		end
		f:write(table.concat(lines, "\n"), "\n")
		f:close()
	end
	log_info("paths JobId=%s: %d staged, %d to stage out", tostring(job_id), n_in, n_out)
	return slurm.SUCCESS
end

function slurm_bb_pre_run(job_id, ...)
	return slurm.SUCCESS, ""
end

function slurm_bb_post_run(job_id, ...)
	return slurm.SUCCESS, ""
end

function slurm_bb_data_out(job_id, job_script, uid, ...)
	log_info("data_out JobId=%s script=%s", tostring(job_id), tostring(job_script))
	return stage("data_out", "stage-out", job_id, job_script, uid)
end

-- 24.05+: data_out is synchronous, so stage-out is done when this is called.
function slurm_bb_test_data_out(job_id, ...)
	return slurm.SUCCESS, ""
end

-- `scontrol show bbstat ...`
function slurm_bb_get_status(uid, gid, ...)
	return slurm.SUCCESS, "Ferry prestaging: #" .. DIRECTIVE .. " stage_in/stage_out directives; transfers are listed by 'ferry stage'.\n"
end
