--[[
Ferry's job_submit/lua script for Slurm (22.05, 23.02, 24.05): refuses #FERRY directives
that Slurm would silently ignore.

WHAT AND WHY
  Ferry's prestaging directives (#FERRY stage_in ... / #FERRY stage_out ..., implemented
  by burst_buffer.lua beside this file) only count in the job script's leading comment
  block. Slurm reads burst buffer directives there and nowhere else: a job whose only
  #FERRY lines come after the first command has no burst buffer for Slurm, no
  burst_buffer hook runs for it (not even slurm_bb_job_process), and it runs unstaged.
  This script makes that an error at submission instead:

    $ sbatch job.sh
    sbatch: error: line 4: #FERRY directive after the first command would be ignored by Slurm; move it above
    sbatch: error: Batch job submission failed: Burst Buffer request invalid

  The leading block is defined exactly as Slurm's burst_buffer/lua plugin scans it (and
  as burst_buffer.lua's slurm_bb_job_process checks it, with the same messages):
  empty lines are skipped, and the first line that does not start with '#' ends it (a
  line of only blanks, "\r" included, ends it too). After the block, any line that is
  "#FERRY" followed by a blank or the end of the line, possibly indented, is refused.
  (That includes such a line inside a here-document or a multi-line string: put a
  character before the '#' if a script really must print one.)

  Jobs without #FERRY lines after the block pass untouched (slurm.SUCCESS), as do
  jobs without a script (salloc, srun). The #FERRY lines inside the block are not
  checked here: burst_buffer.lua's slurm_bb_job_process validates them.
  Pure Lua 5.1, no processes, no files: slurmctld calls this with its locks held.

INSTALLING (operators)
  1. Copy this file to job_submit.lua in the directory of slurm.conf
     (e.g. /etc/slurm/job_submit.lua), readable by SlurmUser.
  2. slurm.conf:   JobSubmitPlugins=lua
     (add ",lua" if other job_submit plugins are already listed).
  3. `scontrol reconfigure` (or restart slurmctld). Slurm reloads this file by itself
     when it changes.
  If Directive= in burst_buffer.conf is not FERRY, change DIRECTIVE below to match (and
  DIRECTIVE in burst_buffer.lua).

  If the site already has a job_submit.lua, copy DIRECTIVE, ESLURM_INVALID_BURST_BUFFER_REQUEST
  and ferry_check_script into it instead, and call ferry_check_script(job_desc.script)
  first in its slurm_job_submit: nil means no objection, a string is the message for
  slurm.log_user("%s", msg), then return ESLURM_INVALID_BURST_BUFFER_REQUEST.
--]]

-- Must equal "Directive=" in burst_buffer.conf (and DIRECTIVE in burst_buffer.lua).
local DIRECTIVE = "FERRY"

-- slurm_errno.h's ESLURM_INVALID_BURST_BUFFER_REQUEST (2094; Slurm's error numbers do
-- not change between releases, and job_submit/lua exports no constant for this one). It is
-- also what Slurm answers when burst_buffer.lua's job_process refuses a job, so sbatch ends
-- both kinds of refusal with "Batch job submission failed: Burst Buffer request invalid",
-- after the message given to slurm.log_user.
local ESLURM_INVALID_BURST_BUFFER_REQUEST = 2094

local function log_info(fmt, ...)
	if slurm.log_info then
		slurm.log_info("job_submit.lua: " .. fmt, ...)
	end
end

-- nil if every #FERRY line of the script is in its leading comment block, otherwise the
-- message for the first one that is not ("line N: ...", N counting from 1).
local function ferry_check_script(script)
	if type(script) ~= "string" then
		return nil
	end
	local prefix = "#" .. DIRECTIVE
	-- Fast path: most scripts never mention the directive.
	if not string.find(script, prefix, 1, true) then
		return nil
	end
	local late = "^%s*" .. prefix .. "%f[%s%z]"
	local in_block = true
	local blank_end -- line number, when a line of only blanks ended the block
	local n = 0
	for line in string.gmatch(script .. "\n", "([^\n]*)\n") do
		n = n + 1
		if in_block then
			if line == "" then
				-- skipped by Slurm
			elseif string.sub(line, 1, 1) ~= "#" then
				in_block = false
				if not string.match(line, "%S") then
					blank_end = n
				end
			end
		end
		if not in_block and string.match(line, late) then
			if blank_end then
				return string.format("line %d: #%s directive after line %d, which holds only blanks and so ends Slurm's directive block, would be ignored by Slurm; empty line %d or move the directive above",
					n, DIRECTIVE, blank_end, blank_end)
			end
			return string.format("line %d: #%s directive after the first command would be ignored by Slurm; move it above",
				n, DIRECTIVE)
		end
	end
	return nil
end

function slurm_job_submit(job_desc, part_list, submit_uid)
	local msg = ferry_check_script(job_desc.script)
	if msg then
		log_info("refused a job of uid %s (%s): %s", tostring(job_desc.user_id), tostring(job_desc.name), msg)
		slurm.log_user("%s", msg)
		return ESLURM_INVALID_BURST_BUFFER_REQUEST
	end
	return slurm.SUCCESS
end

-- A job's script cannot be changed after submission (job_desc.script is nil here), so
-- this only checks a script if some Slurm version ever passes one.
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	local msg = ferry_check_script(job_desc.script)
	if msg then
		log_info("refused a change to JobId=%s: %s", tostring(job_rec and job_rec.job_id), msg)
		slurm.log_user("%s", msg)
		return ESLURM_INVALID_BURST_BUFFER_REQUEST
	end
	return slurm.SUCCESS
end
